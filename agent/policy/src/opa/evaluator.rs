//! Rego decisions for the OPA API and `/v1/validate`: the cache, the time limit's fail mode, and
//! the metrics, around `engine::rego`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tracing::warn;

use agent_engine::Health;
use agent_engine::rego::{EvalError, RegoEngine};

use super::FailMode;
use super::metrics::OpaMetrics;

use super::cache::DecisionCache;

/// One decision.
#[derive(Debug)]
pub struct Decision {
    /// The value of the path, `None` when undefined, or the error when evaluation failed.
    pub result: Result<Option<Arc<Value>>, EvalError>,
    /// Time spent evaluating (0 for a cache hit).
    pub eval_ns: u64,
    pub cached: bool,
    /// Revision of the policy set that answered.
    pub revision: u64,
    /// The revision of each bundle in that set, by name.
    pub bundles: Arc<std::collections::BTreeMap<String, String>>,
}

/// Makes decisions: cache lookup, evaluation, metrics.
pub struct Evaluator {
    engine: Arc<RegoEngine>,
    cache: DecisionCache,
    metrics: OpaMetrics,
    fail_mode: FailMode,
    /// Shared with the incident engine: what a canary rollout is judged by.
    health: Arc<Health>,
}

impl Evaluator {
    pub fn new(
        engine: Arc<RegoEngine>,
        metrics: OpaMetrics,
        fail_mode: FailMode,
        cache_ttl: Duration,
        cache_entries: usize,
    ) -> Evaluator {
        Evaluator {
            engine,
            cache: DecisionCache::new(cache_ttl, cache_entries),
            metrics,
            fail_mode,
            health: Arc::default(),
        }
    }

    /// Counts decisions into `health` (the engine's) instead of a counter of its own.
    pub fn with_health(mut self, health: Arc<Health>) -> Evaluator {
        self.health = health;
        self
    }

    pub fn fail_mode(&self) -> FailMode {
        self.fail_mode
    }

    /// Decides `path` (a `data.` path) for `input`.
    pub fn decide(&self, path: &str, input: Option<&Value>) -> Decision {
        let set = self.engine.current();
        let lookup = self.cache.enabled().then(|| {
            self.metrics.cache_requests.inc();
            DecisionCache::key(set.revision(), path, input)
        });
        if let Some(result) = lookup.as_ref().and_then(|key| self.cache.get(key)) {
            self.metrics.cache_hits.inc();
            return Decision {
                result: Ok(result),
                eval_ns: 0,
                cached: true,
                revision: set.revision(),
                bundles: set.bundle_revisions(),
            };
        }
        let started = Instant::now();
        let outcome = set.evaluate(path, input.cloned().map(regorus::Value::from));
        let elapsed = started.elapsed();
        let result = outcome
            .map(|value| value.map(|v| Arc::new(serde_json::to_value(&v).unwrap_or(Value::Null))));
        self.metrics.evaluated(
            path,
            elapsed.as_secs_f64(),
            result.as_ref().err().map(EvalError::kind),
        );
        let error = result.as_ref().err();
        self.health.record(
            error.is_some(),
            matches!(error, Some(EvalError::TimeLimit { .. })),
        );
        if error.is_some() {
            self.health.record_fail_mode();
        }
        match &result {
            Ok(value) => {
                if let Some(key) = lookup {
                    self.cache.put(key, value.clone());
                }
            }
            Err(err) => warn!(
                event = "opa_evaluation_failed",
                policy_path = path,
                error = %err,
                fail_mode = ?self.fail_mode,
                "Rego evaluation failed; the fail mode decides"
            ),
        }
        Decision {
            result,
            eval_ns: elapsed.as_nanos() as u64,
            cached: false,
            revision: set.revision(),
            bundles: set.bundle_revisions(),
        }
    }
}

/// The decision the fail mode gives when evaluation failed, in the validation policies' shape:
/// closed denies with the reason as a violation, open allows with it as a warning.
pub fn fail_decision(mode: FailMode, err: &EvalError) -> Value {
    let reason = json!({
        "rule": err.kind(),
        "severity": "critical",
        "message": format!("{err}; {}", match mode {
            FailMode::FailClosed => "denied (fail_closed)",
            FailMode::FailOpen => "allowed without evaluation (fail_open)",
        }),
    });
    match mode {
        FailMode::FailClosed => json!({"allow": false, "violations": [reason], "warnings": []}),
        FailMode::FailOpen => json!({"allow": true, "violations": [], "warnings": [reason]}),
    }
}
