//! History facts from the audit ring, answered from memory: how many incidents of a type this node
//! recorded since a time, and when a policy last matched here.
//!
//! The index follows the ring in entries: it keeps at most as many incidents as the ring keeps
//! entries, and forgets the oldest first. It can hold a little more history than the ring (the
//! ring also drops by bytes, and its rejected payloads and mesh actions sent for peers take slots
//! but are not incidents of this node). It is filled from the ring at start ([`History::record`]
//! for each entry, oldest first) and then fed every recorded decision, so a fact never scans the
//! ring. Types are at most 256 bytes (the intake refuses longer ones).

use std::collections::{HashMap, VecDeque};

/// Looked up on every history fact: a fast hash.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

/// Policies whose last match is remembered at most (renamed and deleted ones age out).
const MAX_POLICIES: usize = 10_000;

#[derive(Debug)]
pub struct History {
    capacity: usize,
    /// Every recorded incident's type, oldest first: what to forget when full.
    order: VecDeque<Arc<str>>,
    /// When each incident of a type was recorded, oldest first.
    by_type: Map<Arc<str>, VecDeque<u64>>,
    last_matched: HashMap<String, u64>,
}

impl History {
    pub fn new(capacity: usize) -> History {
        History {
            capacity: capacity.max(1),
            order: VecDeque::new(),
            by_type: Map::default(),
            last_matched: HashMap::new(),
        }
    }

    /// Notes an incident of `kind` at `at_ms`, and the policies that matched it.
    pub fn record<'a>(
        &mut self,
        kind: &str,
        at_ms: u64,
        matched: impl IntoIterator<Item = &'a str>,
    ) {
        if self.order.len() >= self.capacity {
            self.forget_oldest();
        }
        let kind: Arc<str> = match self.by_type.get_key_value(kind) {
            Some((key, _)) => Arc::clone(key),
            None => Arc::from(kind),
        };
        let times = self.by_type.entry(Arc::clone(&kind)).or_default();
        // Decisions may be recorded slightly out of order: keep each list sorted.
        let at = times.partition_point(|&t| t <= at_ms);
        times.insert(at, at_ms);
        self.order.push_back(kind);
        for name in matched {
            match self.last_matched.get_mut(name) {
                Some(last) => *last = (*last).max(at_ms),
                None => {
                    if self.last_matched.len() >= MAX_POLICIES {
                        self.forget_policies();
                    }
                    self.last_matched.insert(name.to_owned(), at_ms);
                }
            }
        }
    }

    /// Incidents of `kind` recorded at or after `since_ms`.
    ///
    /// Windows are recent and short beside what the ring holds, so the search gallops from the
    /// newest end: it touches a few cache lines near the end instead of a binary search's
    /// scattered ones over the whole list.
    pub fn count(&self, kind: &str, since_ms: u64) -> usize {
        let Some(times) = self.by_type.get(kind) else {
            return 0;
        };
        let len = times.len();
        // Double a step back from the end until it lands before `since_ms` (or past the start).
        let mut step = 1;
        while step <= len && times[len - step] >= since_ms {
            step *= 2;
        }
        // The first index at or after `since_ms` lies in [len - step, len - step / 2].
        let mut first = len.saturating_sub(step);
        let mut end = len - step / 2;
        while first < end {
            let mid = first + (end - first) / 2;
            if times[mid] < since_ms {
                first = mid + 1;
            } else {
                end = mid;
            }
        }
        len - first
    }

    /// When `policy` last matched, in Unix milliseconds.
    pub fn last_matched(&self, policy: &str) -> Option<u64> {
        self.last_matched.get(policy).copied()
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    fn forget_oldest(&mut self) {
        let Some(kind) = self.order.pop_front() else {
            return;
        };
        if let Some(times) = self.by_type.get_mut(&kind) {
            times.pop_front();
            if times.is_empty() {
                self.by_type.remove(&kind);
            }
        }
    }

    fn forget_policies(&mut self) {
        let mut times: Vec<u64> = self.last_matched.values().copied().collect();
        times.sort_unstable();
        let median = times[times.len() / 2];
        self.last_matched.retain(|_, at| *at > median);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_a_window_and_forgets_like_the_ring() {
        let mut history = History::new(3);
        history.record("memory_leak", 1_000, ["leak rule"]);
        history.record("memory_leak", 2_000, []);
        history.record("cpu_spike", 3_000, []);
        assert_eq!(history.count("memory_leak", 0), 2);
        assert_eq!(history.count("memory_leak", 1_500), 1);
        assert_eq!(history.last_matched("leak rule"), Some(1_000));
        // A fourth entry pushes the oldest out, as the ring would.
        history.record("cpu_spike", 4_000, []);
        assert_eq!(history.count("memory_leak", 0), 1);
        assert_eq!(history.count("cpu_spike", 0), 2);
        assert_eq!(history.len(), 3);
        assert_eq!(history.last_matched("other"), None);
    }

    #[test]
    fn the_galloping_count_agrees_with_a_scan() {
        let mut history = History::new(10_000);
        for i in 0..5_000u64 {
            history.record("t", i * 3, []);
        }
        for since in [0, 1, 2, 3, 4, 100, 7_497, 14_995, 14_997, 14_998, 20_000] {
            let scan = (0..5_000u64).filter(|i| i * 3 >= since).count();
            assert_eq!(history.count("t", since), scan, "since {since}");
        }
        assert_eq!(History::new(1).count("t", 0), 0);
    }
}
