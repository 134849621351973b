//! The systemd notification protocol, for `Type=notify` (`deploy/mesh-agent.service`): READY once
//! the agent serves (its store is open, its API listens, and with a mesh its gossip socket is
//! bound), STOPPING when a shutdown begins, and, when the unit sets `WatchdogSec`, a watchdog ping
//! at half that interval for as long as the runtime schedules tasks and no fatal fault was raised.
//! Not under systemd (`NOTIFY_SOCKET` unset) every call does nothing.

use std::time::Duration;

use agent_base::Fatal;
use sd_notify::NotifyState;
use tracing::warn;

/// Tells systemd the agent serves.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd a reload (SIGHUP) is under way; `ready` ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Tells systemd the agent is stopping (so it does not count the wait as a hang).
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Pings the watchdog at half its interval while the agent is sound: a runtime too busy to run
/// this task, or a data file that failed a commit, lets systemd's watchdog fire and restart it.
pub fn spawn_watchdog(fatal: Fatal) -> Option<tokio::task::JoinHandle<()>> {
    let interval = watchdog_interval()? / 2;
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(10)));
        loop {
            ticks.tick().await;
            if fatal.reason().is_some() {
                // The shutdown under way has its own bound; no more pings.
                return;
            }
            send(&[NotifyState::Watchdog]);
        }
    }))
}

/// The watchdog interval the unit asked for (`WATCHDOG_USEC`, for this process), if any.
fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|interval| !interval.is_zero())
}

fn send(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        warn!(error = %err, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
