//! Store work from async code. On a multi-threaded runtime (the daemon) it runs on tokio's
//! blocking pool, so a commit never holds up gossip or the API. On a current-thread runtime (a
//! simulation on a paused clock, or a unit test) it runs inline: that runtime has no other thread
//! to keep serving while the store works, and a blocking thread finishing at a wall-clock moment
//! would reorder what the simulation's seed otherwise fixes.

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::task::JoinError;

/// Runs `work` off the async threads (or inline, on a current-thread runtime); fails only when
/// the blocking task panicked or was cancelled.
pub async fn run<T, F>(work: F) -> Result<T, JoinError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if Handle::current().runtime_flavor() == RuntimeFlavor::CurrentThread {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work).await
}
