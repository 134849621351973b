//! Rego decisions in-process: the seed's `resource_limits` policy with the seed's example input,
//! evaluated by the engine alone, and through the evaluator with the decision cache off and on.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use agent_engine::rego::{RegoEngine, RegoSet, RegoSettings};
use agent_policy::files;
use agent_policy::opa::{Evaluator, FailMode, OpaMetrics};
use criterion::{Criterion, criterion_group, criterion_main};
use prometheus_client::registry::Registry;

const RULE: &str = "data.neuralhive.orchestrator.resource_limits.result";

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../policies/rego");
    let settings = RegoSettings {
        time_limit: Duration::from_millis(250),
    };
    let dir = files::rego::read_dir(&root).unwrap();
    let set = RegoSet::build(&dir.modules, serde_json::json!({}), 1, settings).unwrap();
    let input: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            root.join("neuralhive/orchestrator/resource_limits.cases/seed_example.input.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let rego_input = regorus::Value::from(input.clone());
    let allowed = set
        .evaluate(RULE, Some(rego_input.clone()))
        .unwrap()
        .unwrap();
    assert_eq!(serde_json::to_value(&allowed).unwrap()["allow"], true);

    let engine = Arc::new(RegoEngine::new(settings));
    engine.replace(set);
    let metrics = OpaMetrics::register(&mut Registry::default());
    let uncached = Evaluator::new(
        Arc::clone(&engine),
        metrics.clone(),
        FailMode::FailClosed,
        Duration::ZERO,
        0,
    );
    let cached = Evaluator::new(
        Arc::clone(&engine),
        metrics,
        FailMode::FailClosed,
        Duration::from_secs(3600),
        10_000,
    );

    let mut group = c.benchmark_group("rego");
    group.bench_function("resource_limits_seed_eval", |b| {
        let set = engine.current();
        b.iter(|| set.evaluate(black_box(RULE), Some(rego_input.clone())))
    });
    group.bench_function("resource_limits_seed_decide_uncached", |b| {
        b.iter(|| uncached.decide(black_box(RULE), Some(black_box(&input))))
    });
    group.bench_function("resource_limits_seed_decide_cached", |b| {
        b.iter(|| cached.decide(black_box(RULE), Some(black_box(&input))))
    });
    // For comparison: regorus's tree-walking interpreter on the same rule (the agent uses the VM).
    let mut interpreter = regorus::Engine::new();
    for m in &dir.modules {
        interpreter
            .add_policy(m.id.clone(), m.text.clone())
            .unwrap();
    }
    group.bench_function("resource_limits_seed_interpreter", |b| {
        b.iter(|| {
            interpreter.set_input(rego_input.clone());
            interpreter.eval_rule(RULE.to_owned())
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
