//! How this node's evaluations are going, counted in one place for a canary rollout's verdict:
//! evaluations, and those that failed (a Rego rule's runtime error, a time limit, a decision
//! answered by the fail mode). Cumulative since the process started; the rollout controller
//! takes differences.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters shared by the incident engine and the Rego decision path (one atomic add each).
#[derive(Debug, Default)]
pub struct Health {
    evaluations: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    fail_mode: AtomicU64,
}

/// The counters read at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HealthSample {
    /// Incidents evaluated and Rego decisions made.
    pub evaluations: u64,
    /// Of those, the ones that failed (time limits included).
    pub errors: u64,
    /// Failures that were a time limit.
    pub timeouts: u64,
    /// Rego decisions answered by the fail mode because evaluation failed.
    pub fail_mode: u64,
}

impl Health {
    /// One evaluation; `error` when it failed, `timeout` when the failure was the time limit.
    pub fn record(&self, error: bool, timeout: bool) {
        self.evaluations.fetch_add(1, Ordering::Relaxed);
        if error {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        if timeout {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A decision the fail mode answered.
    pub fn record_fail_mode(&self) {
        self.fail_mode.fetch_add(1, Ordering::Relaxed);
    }

    pub fn sample(&self) -> HealthSample {
        HealthSample {
            evaluations: self.evaluations.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            timeouts: self.timeouts.load(Ordering::Relaxed),
            fail_mode: self.fail_mode.load(Ordering::Relaxed),
        }
    }
}

impl HealthSample {
    /// What happened between `earlier` and this sample (zero where a counter went back, as after
    /// a restart).
    pub fn since(&self, earlier: &HealthSample) -> HealthSample {
        HealthSample {
            evaluations: self.evaluations.saturating_sub(earlier.evaluations),
            errors: self.errors.saturating_sub(earlier.errors),
            timeouts: self.timeouts.saturating_sub(earlier.timeouts),
            fail_mode: self.fail_mode.saturating_sub(earlier.fail_mode),
        }
    }

    /// Failures of any kind: errors (time limits among them) and fail-mode answers (which answer
    /// an error, so the larger of the two is counted, not their sum).
    pub fn failures(&self) -> u64 {
        self.errors.max(self.fail_mode)
    }
}
