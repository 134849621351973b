//! Proves that evaluating a compiled condition allocates nothing: a counting global allocator
//! counts this thread's allocations around many evaluations. One test function only, and the
//! count is per thread, so the test harness's own work cannot add noise.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;

// The condition language is its own crate, without regorus (whose global allocator would clash
// with this one): this test links it alone.
use agent_condition::{Condition, FactQuery, Facts, Incident};
use serde_json::{Value, json};

thread_local! {
    // `const` and `Cell<usize>`: no lazy initialisation and no destructor, so reading it from
    // inside the allocator cannot itself allocate or recurse.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

struct Counting;

fn count() {
    // `try_with`: during thread teardown the slot may be gone; those allocations don't matter.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; counting only
// touches a thread-local `Cell`.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

fn incident(kind: &str, severity: f64, context: Value) -> Incident {
    let Value::Object(context) = context else {
        panic!("context must be an object")
    };
    Incident {
        id: "inc-42".into(),
        kind: kind.into(),
        severity,
        timestamp: Some("2024-05-01T10:00:00Z".into()),
        context,
    }
}

#[test]
fn eval_allocates_nothing() {
    // The counter must see allocations, or the zero below would prove nothing.
    let before = allocations();
    black_box(Box::new(1u64));
    assert!(
        allocations() > before,
        "the counting allocator is not counting"
    );

    let cases = [
        (
            "incident.type == 'memory_leak' and incident.severity >= 8",
            vec![
                incident("memory_leak", 9.0, json!({})),
                incident("memory_leak", 2.0, json!({})),
                incident("x", 9.0, json!({})),
            ],
        ),
        (
            "incident.type == 'cpu_spike' and incident.context.load_avg > 10.0",
            vec![
                incident("cpu_spike", 1.0, json!({"load_avg": 12.5})),
                incident("cpu_spike", 1.0, json!({})),
            ],
        ),
        (
            "incident.type == 'disk_full' and incident.context.usage_percent >= 95",
            vec![
                incident("disk_full", 1.0, json!({"usage_percent": 97})),
                incident("disk_full", 1.0, json!({"usage_percent": "x"})),
            ],
        ),
        (
            "incident.type == 'network_latency' and incident.context.latency_ms > 500",
            vec![incident("network_latency", 1.0, json!({"latency_ms": 800}))],
        ),
        (
            "incident.context.service.matches('^nginx-(front|back)end-\\\\d+$') and incident.id.startswith('inc')",
            vec![
                incident("x", 1.0, json!({"service": "nginx-frontend-12"})),
                incident("x", 1.0, json!({"service": "apache"})),
            ],
        ),
        (
            "incident.context.disks[0]['usage'] in [90, 91, 'x'] or incident.context.tags.contains('edge') \
             or not incident.context.degraded or incident.context.a == incident.context.b",
            vec![incident(
                "x",
                1.0,
                json!({"disks": [{"usage": 3}], "tags": ["web"], "degraded": true, "a": [1, {"k": 2}], "b": [1.0, {"k": 2}]}),
            )],
        ),
    ];
    for (source, incidents) in &cases {
        let condition = Condition::compile(source).unwrap();
        for incident in incidents {
            // Warm-up: the regex builds its per-thread search cache on first use.
            let expected = condition.eval(incident);
            let before = allocations();
            for _ in 0..1000 {
                assert_eq!(black_box(&condition).eval(black_box(incident)), expected);
            }
            let allocated = allocations() - before;
            assert_eq!(
                allocated, 0,
                "{source} allocated {allocated} times over 1000 evaluations of {incident:?}"
            );
        }
    }

    // Facts: the evaluator asks, the caller answers; nothing in between allocates.
    struct Answers;
    impl Facts for Answers {
        fn fact(&self, query: FactQuery<'_>) -> Option<f64> {
            match query {
                FactQuery::LastMatched(_) => None,
                _ => Some(3.0),
            }
        }
    }
    let condition = Condition::compile(
        "mesh.fraction_with('cpu_spike') >= 0.3 and history.count('memory_leak', '10m') >= 3 \
         and mesh.nodes_alive > 1 or history.last_matched('p') < 60",
    )
    .unwrap();
    let leak = incident("memory_leak", 9.0, json!({}));
    let expected = condition.eval_with(&leak, &Answers);
    let before = allocations();
    for _ in 0..1000 {
        assert_eq!(
            black_box(&condition).eval_with(black_box(&leak), &Answers),
            expected
        );
    }
    assert_eq!(
        allocations() - before,
        0,
        "a condition with facts allocated"
    );
}
