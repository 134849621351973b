//! A condition with mesh and history facts, per evaluation, as the decider runs it: the facts view
//! of one incident (made once per incident, the peers' view loaded on its first mesh fact) over a
//! 50-node mesh with 20 incident types, and a history index holding 100,000 incidents. Goal:
//! under 100 ns per condition evaluated; `view_and_condition` adds the view's making, which one
//! incident pays once whatever the number of policies.

use std::hint::black_box;

use agent_condition::Condition;
use agent_decision::DecisionsConfig;
use agent_decision::facts::peers::TypeAcross;
use agent_decision::facts::{FactSources, PeerView};
use agent_engine::Incident;
use criterion::{Criterion, criterion_group, criterion_main};

const CONDITION: &str = "incident.type == 'memory_leak' and mesh.fraction_with('cpu_spike') >= 0.3 \
                         and history.count('memory_leak', '10m') >= 3";

fn sources(now_ms: u64) -> FactSources {
    let sources = FactSources::new("n00", &DecisionsConfig::default(), 100_000);
    let mut view = PeerView::alone("n00");
    view.alive.extend((1..50).map(|i| format!("n{i:02}")));
    view.known = 50;
    view.from_mesh = true;
    for t in 0..20 {
        let kind = if t == 0 {
            "cpu_spike".to_owned()
        } else {
            format!("type_{t}")
        };
        view.types.insert(
            kind,
            TypeAcross {
                nodes: (1..=20).map(|i| (format!("n{i:02}"), 3, 7.0)).collect(),
                max_severity: 7.0,
            },
        );
    }
    view.alive.sort();
    sources.set_peers(view);
    // 100,000 incidents over the last day, a tenth of them memory leaks.
    for i in 0..100_000u64 {
        let kind = if i % 10 == 0 {
            "memory_leak"
        } else {
            "disk_full"
        };
        sources.remember(kind, now_ms - 86_400_000 + i * 864, []);
    }
    sources
}

fn bench(c: &mut Criterion) {
    let now_ms = agent_base::clock::now_ms();
    let sources = sources(now_ms);
    let incident = Incident {
        id: "evt-1".into(),
        kind: "memory_leak".into(),
        severity: 9.0,
        timestamp: None,
        context: serde_json::Map::new(),
    };
    let condition = Condition::compile(CONDITION).unwrap();
    assert!(
        condition
            .eval_with(&incident, &sources.view(&incident, None, now_ms))
            .matched,
        "the bench incident must match"
    );
    let mut group = c.benchmark_group("facts");
    // As the engine runs it: one facts view per incident, read by every policy's condition.
    let facts = sources.view(&incident, None, now_ms);
    group.bench_function("condition_with_mesh_and_history_facts", |b| {
        b.iter(|| black_box(&condition).eval_with(black_box(&incident), &facts))
    });
    // The view made for each evaluation: what one incident with a single policy pays.
    group.bench_function("view_and_condition", |b| {
        b.iter(|| {
            let facts = sources.view(black_box(&incident), None, now_ms);
            black_box(&condition).eval_with(black_box(&incident), &facts)
        })
    });
    for (name, source) in [
        ("mesh_only", "mesh.fraction_with('cpu_spike') >= 0.3"),
        ("history_only", "history.count('memory_leak', '10m') >= 3"),
        ("alive_only", "mesh.nodes_alive >= 3"),
    ] {
        let condition = Condition::compile(source).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                let facts = sources.view(black_box(&incident), None, now_ms);
                black_box(&condition).eval_with(black_box(&incident), &facts)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
