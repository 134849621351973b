//! Per-client rate limits (the `[limits]` section): a route layered with [`rate_limited`] lets
//! each client address make `evaluate_per_second` requests a second on average, in bursts of up to
//! `evaluate_burst`, and answers the rest 429 with `Retry-After`. GCRA from `governor`, keyed by
//! the peer address the server puts in every request ([`ConnectInfo`]).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;
use serde::{Deserialize, Serialize};

use agent_base::InvalidSetting;

/// Checks between sweeps of clients whose allowance is whole again (which bounds the table to
/// the clients of the last moments).
const SWEEP_EVERY: u64 = 4_096;

/// The `[limits]` section: per-client rates of the evaluation routes (`/evaluate`,
/// `/evaluate/batch`, OPA's `POST /v1/data...` and `/v1/validate`). 0 turns the limit off (the
/// default: a node's callers are usually its own services, and benchmarks drive it flat out).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests a second each client may make on average.
    pub evaluate_per_second: u32,
    /// Requests a client may make at once after a quiet spell (0: as many as `per_second`).
    pub evaluate_burst: u32,
}

impl LimitsConfig {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if self.evaluate_per_second == 0 && self.evaluate_burst != 0 {
            return Err(InvalidSetting::new(
                "limits.evaluate_burst",
                "is set but limits.evaluate_per_second is 0 (no limit); set both",
            ));
        }
        Ok(())
    }

    /// The limiter, or `None` when the limit is off.
    pub fn limiter(&self, rejected: Counter) -> Option<Arc<ClientLimiter>> {
        let rate = NonZeroU32::new(self.evaluate_per_second)?;
        let burst = NonZeroU32::new(self.evaluate_burst).unwrap_or(rate);
        Some(Arc::new(ClientLimiter {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            checks: AtomicU64::new(0),
            rejected,
        }))
    }
}

/// One allowance per client address.
pub struct ClientLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    checks: AtomicU64,
    rejected: Counter,
}

impl ClientLimiter {
    /// `Ok` when `client` may go on; otherwise the whole seconds until it may (at least 1).
    pub fn check(&self, client: IpAddr) -> Result<(), u64> {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(&client).map_err(|not_until| {
            self.rejected.inc();
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }
}

/// The limit in force on the evaluation routes, or none; [`EvaluateLimit::reload`] replaces it
/// (on SIGHUP) with what a new `[limits]` section says, every client starting afresh.
pub struct EvaluateLimit {
    current: ArcSwapOption<ClientLimiter>,
    config: ArcSwap<LimitsConfig>,
    rejected: Counter,
}

impl EvaluateLimit {
    pub fn new(config: &LimitsConfig, rejected: Counter) -> Arc<EvaluateLimit> {
        Arc::new(EvaluateLimit {
            current: ArcSwapOption::new(config.limiter(rejected.clone())),
            config: ArcSwap::from_pointee(config.clone()),
            rejected,
        })
    }

    /// Takes `config` in place of the limit in force; `false` when it is the same (the clients'
    /// allowances are then kept).
    pub fn reload(&self, config: &LimitsConfig) -> bool {
        if **self.config.load() == *config {
            return false;
        }
        self.current.store(config.limiter(self.rejected.clone()));
        self.config.store(Arc::new(config.clone()));
        true
    }
}

/// Middleware: lets a request through, or answers 429 with `Retry-After` and the API's error
/// shape. A request without a peer address (none the server accepted) is let through.
pub async fn rate_limited(
    State(limit): State<Arc<EvaluateLimit>>,
    request: Request<Body>,
    next: Next,
) -> Response {
    let limiter = limit.current.load();
    let Some(limiter) = limiter.as_ref() else {
        return next.run(request).await;
    };
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    match client.map(|client| limiter.check(client)) {
        Some(Err(retry_after)) => {
            let body = serde_json::json!({
                "error": {
                    "code": "rate_limited",
                    "message": format!(
                        "too many evaluation requests from this client (limits.evaluate_per_second); retry in {retry_after} s"
                    ),
                }
            });
            let mut response = (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response();
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            response
        }
        _ => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_past_its_burst_waits_and_others_do_not() {
        let config = LimitsConfig {
            evaluate_per_second: 1,
            evaluate_burst: 3,
        };
        let limiter = config.limiter(Counter::default()).unwrap();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.check(a), Ok(()));
        }
        // One request a second: the next is a second away at most.
        assert_eq!(limiter.check(a), Err(1));
        assert_eq!(limiter.check(b), Ok(()));
        assert!(
            LimitsConfig::default()
                .limiter(Counter::default())
                .is_none()
        );
        assert!(
            LimitsConfig {
                evaluate_per_second: 0,
                evaluate_burst: 5
            }
            .validate()
            .is_err()
        );
    }
}
