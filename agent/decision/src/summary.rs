//! Audit summaries for the central collector: what this node evaluated in each window (default
//! 10 s), per policy, with latency percentiles, sent through the outbox like any action.
//!
//! [`WindowStats`] is what the decider counts into (one short lock per evaluation); the
//! [`run`] task closes a window every interval and queues its [`AuditSummary`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mesh_proto::{AuditSummary, PolicySummary};
use tokio::sync::watch;
use tracing::{debug, warn};

use agent_base::InvalidSetting;
use agent_base::clock::{now_us, rfc3339};
use agent_engine::Evaluation;
use serde::{Deserialize, Serialize};

use crate::audit::AuditLog;
use crate::outbox::{Lane, OutboxItem, Room};

/// Audit summaries for the collector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SummaryConfig {
    /// Seconds per window; 0 sends no summaries.
    pub interval_sec: u64,
    /// Summaries the outbox keeps while the broker is away; the oldest are dropped beyond it.
    /// They never take an action's place (default: a day of 10 s windows).
    pub keep: u64,
}

impl Default for SummaryConfig {
    fn default() -> SummaryConfig {
        SummaryConfig {
            interval_sec: 10,
            keep: 8_640,
        }
    }
}

impl SummaryConfig {
    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.keep == 0 {
            return Err(InvalidSetting::new("summary.keep", "must be at least 1"));
        }
        Ok(())
    }
}

/// Latency buckets: bucket `i` holds evaluations that took under `BASE_NS * GROWTH^i`.
const BASE_NS: f64 = 100.0;
const GROWTH: f64 = 1.1;
const BUCKETS: usize = 160;

/// The counts of the current window.
pub struct WindowStats {
    window: Mutex<Window>,
}

struct Window {
    start_us: i64,
    evaluated: u64,
    matched: u64,
    errors: u64,
    rejected: u64,
    policies: BTreeMap<u64, PolicySummary>,
    latency: Vec<u64>,
    last_revision: u64,
}

impl Window {
    fn new(start_us: i64, last_revision: u64) -> Window {
        Window {
            start_us,
            evaluated: 0,
            matched: 0,
            errors: 0,
            rejected: 0,
            policies: BTreeMap::new(),
            latency: vec![0; BUCKETS],
            last_revision,
        }
    }

    /// The upper bound of the bucket holding the `q` quantile, in microseconds.
    fn quantile_us(&self, q: f64) -> f64 {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return 0.0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in self.latency.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return BASE_NS * GROWTH.powi(i as i32) / 1_000.0;
            }
        }
        BASE_NS * GROWTH.powi(BUCKETS as i32 - 1) / 1_000.0
    }
}

impl Default for WindowStats {
    fn default() -> Self {
        WindowStats::new()
    }
}

impl WindowStats {
    pub fn new() -> WindowStats {
        WindowStats {
            window: Mutex::new(Window::new(now_us(), 0)),
        }
    }

    /// Counts one evaluation.
    pub fn record(&self, evaluation: &Evaluation) {
        let ns = evaluation.elapsed_ns.max(1) as f64;
        let bucket = ((ns / BASE_NS).ln() / GROWTH.ln()).ceil().max(0.0) as usize;
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        w.evaluated += 1;
        w.last_revision = evaluation.set.revision();
        w.latency[bucket.min(BUCKETS - 1)] += 1;
        let mut any_match = false;
        let mut any_error = false;
        for (policy, verdict) in evaluation.iter() {
            let entry = w
                .policies
                .entry(policy.id)
                .or_insert_with(|| PolicySummary {
                    policy_id: policy.id,
                    policy_name: policy.name.to_string(),
                    evaluated: 0,
                    matched: 0,
                    errors: 0,
                });
            entry.evaluated += 1;
            if verdict.outcome.matched {
                entry.matched += 1;
                any_match = true;
            }
            if verdict.error.is_some() {
                entry.errors += 1;
                any_error = true;
            }
        }
        w.matched += u64::from(any_match);
        w.errors += u64::from(any_error);
    }

    /// Counts one rejected intake payload.
    pub fn record_rejected(&self) {
        if let Ok(mut w) = self.window.lock() {
            w.rejected += 1;
        }
    }

    /// Closes the current window at `now_us` and starts the next one.
    fn close(&self, node_id: &str, now_us: i64, audit_head: u64) -> AuditSummary {
        let w = match self.window.lock() {
            Ok(mut w) => {
                let next = Window::new(now_us, w.last_revision);
                std::mem::replace(&mut *w, next)
            }
            Err(_) => Window::new(now_us, 0),
        };
        AuditSummary {
            summary_id: format!("{node_id}:{}", w.start_us),
            node_id: node_id.to_owned(),
            window_start: rfc3339(w.start_us),
            window_end: rfc3339(now_us),
            evaluated: w.evaluated,
            matched: w.matched,
            errors: w.errors,
            rejected: w.rejected,
            latency_p50_us: w.quantile_us(0.50),
            latency_p99_us: w.quantile_us(0.99),
            policies: w.policies.into_values().collect(),
            policy_revision: w.last_revision,
            audit_head,
        }
    }
}

/// Where summaries go and how large they may be.
pub struct SummarySink {
    pub node_id: String,
    pub topic: String,
    pub interval: Duration,
    /// `mqtt.max_message_bytes`: a larger summary sheds its least evaluated policies.
    pub max_bytes: usize,
}

/// Every `interval`, closes the window and queues its summary on `topic` through the outbox's
/// summary lane (until `stop`).
pub async fn run(
    stats: Arc<WindowStats>,
    sink: SummarySink,
    audit: AuditLog,
    mut stop: watch::Receiver<bool>,
) {
    let interval = sink.interval;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let head = match audit.head() {
            Ok(head) => head,
            Err(err) => {
                warn!(error = %err, "cannot read the audit head for a summary");
                0
            }
        };
        let summary = stats.close(&sink.node_id, now_us(), head);
        let item = OutboxItem {
            id: summary.summary_id.clone(),
            topic: sink.topic.clone(),
            payload: payload_within(summary, sink.max_bytes),
            lane: Lane::Summary,
        };
        debug!(id = %item.id, "audit summary queued");
        // Committed at once (with whatever is queued), not awaited here. Summaries take no room:
        // their lane has its own bound.
        drop(
            audit
                .append_durable(Vec::new(), vec![item], Room::none())
                .await,
        );
    }
}

/// The summary as JSON, at most `max_bytes`: the least evaluated policies are left out until it
/// fits (the window's totals stay whole), and the shedding is logged.
fn payload_within(mut summary: AuditSummary, max_bytes: usize) -> String {
    // Serializing derived types into a String cannot fail.
    let mut payload = serde_json::to_string(&summary).unwrap_or_default();
    if payload.len() <= max_bytes {
        return payload;
    }
    let listed = summary.policies.len();
    summary.policies.sort_by(|a, b| {
        b.evaluated
            .cmp(&a.evaluated)
            .then(a.policy_id.cmp(&b.policy_id))
    });
    while payload.len() > max_bytes && !summary.policies.is_empty() {
        // Drop about the share of policies that makes it fit, at least one.
        let keep = summary.policies.len() * max_bytes / payload.len();
        summary
            .policies
            .truncate(keep.min(summary.policies.len() - 1));
        payload = serde_json::to_string(&summary).unwrap_or_default();
    }
    warn!(
        id = %summary.summary_id,
        listed,
        kept = summary.policies.len(),
        max_bytes,
        "audit summary over mqtt.max_message_bytes: least evaluated policies left out"
    );
    payload
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_too_large_keeps_its_most_evaluated_policies() {
        let stats = WindowStats::new();
        let mut summary = stats.close("n1", now_us(), 7);
        summary.evaluated = 1_000;
        summary.policies = (0..200)
            .map(|i| PolicySummary {
                policy_id: i,
                policy_name: format!("policy-{i:03}-{}", "x".repeat(40)),
                evaluated: i,
                matched: 0,
                errors: 0,
            })
            .collect();
        let whole = serde_json::to_string(&summary).unwrap();
        assert_eq!(payload_within(summary.clone(), whole.len()), whole);
        let cut = payload_within(summary, 4096);
        assert!(cut.len() <= 4096, "{}", cut.len());
        let back: AuditSummary = serde_json::from_str(&cut).unwrap();
        assert_eq!(back.evaluated, 1_000);
        assert!(!back.policies.is_empty());
        // The most evaluated ones stayed.
        assert_eq!(back.policies[0].policy_id, 199);
        let lowest = back.policies.iter().map(|p| p.policy_id).min().unwrap();
        assert_eq!(lowest as usize, 200 - back.policies.len());
    }

    #[test]
    fn quantiles_come_from_the_buckets() {
        let mut w = Window::new(0, 0);
        assert_eq!(w.quantile_us(0.5), 0.0);
        // 99 fast evaluations (~1 µs) and one slow one (~1 ms).
        let bucket = |ns: f64| ((ns / BASE_NS).ln() / GROWTH.ln()).ceil() as usize;
        w.latency[bucket(1_000.0)] += 99;
        w.latency[bucket(1_000_000.0)] += 1;
        let p50 = w.quantile_us(0.5);
        let p99 = w.quantile_us(0.99);
        let p100 = w.quantile_us(1.0);
        assert!((1.0..1.1).contains(&p50), "{p50}");
        assert!((1.0..1.1).contains(&p99), "{p99}");
        assert!((1000.0..1100.0).contains(&p100), "{p100}");
    }
}
