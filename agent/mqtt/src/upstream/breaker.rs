//! The upstream circuit breaker, with the seed's states and settings: `closed` (connections are
//! tried, consecutive failures counted, a success resets the count), `open` after
//! `failure_threshold` consecutive failures (nothing is tried for `reset_timeout`; the outbox keeps
//! everything), then `half_open` (one trial: success closes, failure opens again).
//!
//! A failure is a connection attempt that fails, a connection that drops, or a publish the broker
//! does not acknowledge within the ack timeout; a success is a PUBACK, or a connection accepted by
//! the broker (CONNACK) when nothing waits to be sent: a CONNACK alone proves nothing about a
//! broker that never acknowledges a publish. Every state change is logged as a structured event
//! (`upstream_circuit_breaker_state_change`, like the seed's `opa_circuit_breaker_state_change`).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{info, warn};

use super::metrics::{StateLabel, UpstreamMetrics};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub reset_timeout: Duration,
}

/// What `/health` shows.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerView {
    pub state: State,
    pub failure_count: u32,
    pub failure_threshold: u32,
    pub reset_timeout_sec: f64,
}

pub struct Breaker {
    /// Replaced by [`Breaker::set_settings`] (a reload); read under `inner`'s lock.
    settings: Mutex<BreakerSettings>,
    inner: Mutex<Inner>,
    metrics: UpstreamMetrics,
}

struct Inner {
    state: State,
    failures: u32,
    opened_at: Instant,
}

impl Breaker {
    pub fn new(settings: BreakerSettings, metrics: UpstreamMetrics) -> Breaker {
        let breaker = Breaker {
            settings: Mutex::new(settings),
            inner: Mutex::new(Inner {
                state: State::Closed,
                failures: 0,
                opened_at: Instant::now(),
            }),
            metrics,
        };
        breaker.show(State::Closed);
        breaker
    }

    pub fn state(&self) -> State {
        self.inner.lock().map_or(State::Closed, |i| i.state)
    }

    fn settings(&self) -> BreakerSettings {
        *self
            .settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes new thresholds: they count from the next failure or permit on (a breaker open now
    /// stays open until the new reset timeout has passed since it opened).
    pub fn set_settings(&self, settings: BreakerSettings) {
        *self
            .settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = settings;
    }

    pub fn view(&self) -> BreakerView {
        let settings = self.settings();
        let (state, failure_count) = self
            .inner
            .lock()
            .map_or((State::Closed, 0), |i| (i.state, i.failures));
        BreakerView {
            state,
            failure_count,
            failure_threshold: settings.failure_threshold,
            reset_timeout_sec: settings.reset_timeout.as_secs_f64(),
        }
    }

    /// May a connection be tried now? `Err(wait)` while open; after the reset timeout the breaker
    /// turns half-open and allows one trial.
    pub fn permit(&self) -> Result<(), Duration> {
        let Ok(mut inner) = self.inner.lock() else {
            return Ok(());
        };
        if inner.state != State::Open {
            return Ok(());
        }
        let waited = inner.opened_at.elapsed();
        let reset_timeout = self.settings().reset_timeout;
        if waited < reset_timeout {
            return Err(reset_timeout - waited);
        }
        self.change(&mut inner, State::HalfOpen, "reset timeout elapsed");
        Ok(())
    }

    pub fn success(&self) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.failures = 0;
        if inner.state != State::Closed {
            self.change(&mut inner, State::Closed, "upstream answered");
        }
    }

    pub fn failure(&self, reason: &str) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.failures = inner.failures.saturating_add(1);
        let trip = match inner.state {
            State::HalfOpen => true,
            State::Closed => inner.failures >= self.settings().failure_threshold,
            State::Open => false,
        };
        if trip {
            inner.opened_at = Instant::now();
            self.change(&mut inner, State::Open, reason);
        }
    }

    fn change(&self, inner: &mut Inner, to: State, reason: &str) {
        let from = inner.state;
        inner.state = to;
        self.metrics.breaker_transitions.inc();
        self.show(to);
        let log = |msg| {
            if to == State::Open {
                warn!(
                    event = "upstream_circuit_breaker_state_change",
                    old_state = from.name(),
                    new_state = to.name(),
                    failure_count = inner.failures,
                    reason,
                    "{msg}"
                );
            } else {
                info!(
                    event = "upstream_circuit_breaker_state_change",
                    old_state = from.name(),
                    new_state = to.name(),
                    failure_count = inner.failures,
                    reason,
                    "{msg}"
                );
            }
        };
        log("upstream circuit breaker state change");
    }

    fn show(&self, current: State) {
        for state in [State::Closed, State::Open, State::HalfOpen] {
            self.metrics
                .breaker_state
                .get_or_create(&StateLabel {
                    state: state.name(),
                })
                .set(i64::from(state == current));
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    fn breaker(threshold: u32, reset_ms: u64) -> Breaker {
        breaker_in(&mut Registry::default(), threshold, reset_ms)
    }

    fn breaker_in(registry: &mut Registry, threshold: u32, reset_ms: u64) -> Breaker {
        Breaker::new(
            BreakerSettings {
                failure_threshold: threshold,
                reset_timeout: Duration::from_millis(reset_ms),
            },
            UpstreamMetrics::register(registry),
        )
    }

    #[test]
    fn opens_after_threshold_consecutive_failures() {
        let b = breaker(3, 60_000);
        b.failure("x");
        b.failure("x");
        b.success(); // resets the count
        b.failure("x");
        b.failure("x");
        assert_eq!(b.state(), State::Closed);
        b.failure("x");
        assert_eq!(b.state(), State::Open);
        assert!(b.permit().is_err());
    }

    #[test]
    fn half_open_trial_closes_or_reopens() {
        let mut registry = Registry::default();
        let b = breaker_in(&mut registry, 1, 0);
        b.failure("x");
        assert_eq!(b.state(), State::Open);
        assert!(b.permit().is_ok());
        assert_eq!(b.state(), State::HalfOpen);
        b.failure("trial failed");
        assert_eq!(b.state(), State::Open);
        assert!(b.permit().is_ok());
        b.success();
        assert_eq!(b.state(), State::Closed);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("upstream_circuit_breaker_state{state=\"closed\"} 1"),
            "{text}"
        );
    }
}
