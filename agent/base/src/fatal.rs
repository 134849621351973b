//! Faults the agent cannot carry on past. When the data file fails a commit, redb refuses every
//! later write (`PreviousIo`) until the file is opened again: retrying in place only piles up
//! decisions that can never be recorded. The task that sees such a fault [`raise`](Fatal::raise)s
//! it; the daemon then stops taking work, shuts down, and exits non-zero, so systemd
//! (`Restart=on-failure`) starts it again on a freshly opened file.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::error;

/// A process-wide fatal fault, raised at most once. Cheap to clone.
#[derive(Clone)]
pub struct Fatal {
    raised: Arc<watch::Sender<Option<String>>>,
}

impl Default for Fatal {
    fn default() -> Self {
        Fatal::new()
    }
}

impl Fatal {
    pub fn new() -> Fatal {
        Fatal {
            raised: Arc::new(watch::channel(None).0),
        }
    }

    /// Records the fault (the first one wins) and wakes whoever waits in [`raised`](Self::raised).
    pub fn raise(&self, reason: impl Into<String>) {
        let reason = reason.into();
        self.raised.send_if_modified(|slot| {
            if slot.is_some() {
                return false;
            }
            error!(event = "fatal", reason = %reason, "fatal fault: the agent stops and exits non-zero");
            *slot = Some(reason);
            true
        });
    }

    /// The fault, if one was raised.
    pub fn reason(&self) -> Option<String> {
        self.raised.borrow().clone()
    }

    /// Resolves with the fault's reason once one is raised.
    pub async fn raised(&self) -> String {
        let mut rx = self.raised.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            // The sender lives as long as `self`: `changed` cannot fail here.
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Fatal;

    #[tokio::test]
    async fn the_first_fault_wins_and_wakes_waiters() {
        let fatal = Fatal::new();
        assert_eq!(fatal.reason(), None);
        let waiter = tokio::spawn({
            let fatal = fatal.clone();
            async move { fatal.raised().await }
        });
        fatal.raise("disk failed");
        fatal.raise("second");
        assert_eq!(waiter.await.unwrap(), "disk failed");
        assert_eq!(fatal.reason().as_deref(), Some("disk failed"));
    }
}
