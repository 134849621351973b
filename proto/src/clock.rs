//! Hybrid logical clock stamps: the order of policy versions across nodes.
//!
//! A stamp is wall-clock milliseconds plus a logical counter that breaks ties and keeps the order causal
//! when clocks drift; the author node id breaks the remaining ties (see `PolicyRecord::stamp`).

use serde::{Deserialize, Serialize};

/// One hybrid logical clock reading. Ordered by `(wall_ms, logical)`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Hlc {
    pub wall_ms: u64,
    pub logical: u32,
}

impl Hlc {
    /// The next stamp after `self` for a local event happening at physical time `now_ms`.
    pub fn tick(self, now_ms: u64) -> Hlc {
        if now_ms > self.wall_ms {
            Hlc {
                wall_ms: now_ms,
                logical: 0,
            }
        } else {
            Hlc {
                wall_ms: self.wall_ms,
                logical: self.logical.saturating_add(1),
            }
        }
    }

    /// The next stamp after both `self` and a `seen` remote stamp, at physical time `now_ms`.
    pub fn merge(self, seen: Hlc, now_ms: u64) -> Hlc {
        let latest = self.max(seen);
        latest.tick(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_is_strictly_increasing_even_when_the_wall_clock_goes_back() {
        let a = Hlc::default().tick(1_000);
        let b = a.tick(900);
        let c = b.tick(1_000);
        assert!(a < b && b < c);
        assert_eq!(b.wall_ms, 1_000);
        assert_eq!(
            a.tick(2_000),
            Hlc {
                wall_ms: 2_000,
                logical: 0
            }
        );
    }

    #[test]
    fn merge_moves_past_a_remote_stamp_from_the_future() {
        let local = Hlc {
            wall_ms: 100,
            logical: 3,
        };
        let remote = Hlc {
            wall_ms: 500,
            logical: 7,
        };
        let merged = local.merge(remote, 200);
        assert!(merged > remote && merged > local);
    }
}
