//! [`Room`]: places in a `block` outbox taken by one decision, on their way to the writer.

use tokio::sync::OwnedSemaphorePermit;

/// Places for actions taken from the outbox's room by [`Outbox::reserve`](super::Outbox::reserve).
/// Dropped, it gives them back: a decision abandoned before its commit (an HTTP client that went
/// away, a commit that failed) leaves the outbox's room as it found it. Once its actions are
/// committed the writer [`keep`](super::Outbox::keep)s it, and the places come back one by one as
/// the broker acknowledges the actions.
#[derive(Debug, Default)]
pub struct Room(Option<OwnedSemaphorePermit>);

impl Room {
    pub(super) fn new(permit: OwnedSemaphorePermit) -> Room {
        Room(Some(permit))
    }

    /// No places (the outbox does not block, or nothing was reserved).
    pub fn none() -> Room {
        Room(None)
    }

    /// Forgets the places (now held by committed actions); returns how many.
    pub(super) fn keep(self) -> u64 {
        match self.0 {
            Some(permit) => {
                let n = permit.num_permits() as u64;
                permit.forget();
                n
            }
            None => 0,
        }
    }
}
