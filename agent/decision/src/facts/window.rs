//! This node's incidents over the sliding window, per type: how many, and the highest severity.
//! What it gossips about itself ([`IncidentWindow::summary`]) and what mesh facts read for this node.
//!
//! The window is kept as [`BUCKETS`] sub-windows per type, so it slides in steps of a twelfth of
//! its length (it covers between eleven and twelve twelfths of it, the current sub-window being
//! partly filled), and a type costs the same memory however many incidents it sees. At most
//! [`MAX_TYPES`] types are tracked; a new type beyond that replaces the one seen least recently.

use std::collections::HashMap;

/// Looked up on every mesh fact: a fast hash (keys are bounded in number, see [`MAX_TYPES`]).
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

use mesh_proto::shared::{IncidentSummary, TypeCount};

/// Sub-windows per type.
pub const BUCKETS: usize = 12;
/// Types tracked at once.
pub const MAX_TYPES: usize = 256;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which sub-window (`at_ms / step_ms`) the bucket holds; stale buckets are skipped.
    slot: u64,
    count: u32,
    max_severity: f64,
}

#[derive(Debug, Default)]
struct TypeWindow {
    buckets: [Bucket; BUCKETS],
    last_ms: u64,
}

/// Counts and highest severities per incident type over the last `window_ms`.
#[derive(Debug)]
pub struct IncidentWindow {
    step_ms: u64,
    types: Map<String, TypeWindow>,
}

/// One type's figures within the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TypeStats {
    pub count: u32,
    pub max_severity: f64,
}

impl IncidentWindow {
    pub fn new(window_ms: u64) -> IncidentWindow {
        IncidentWindow {
            step_ms: (window_ms / BUCKETS as u64).max(1),
            types: Map::default(),
        }
    }

    pub fn window_ms(&self) -> u64 {
        self.step_ms * BUCKETS as u64
    }

    /// Counts one incident of `kind` at `at_ms`.
    pub fn record(&mut self, kind: &str, severity: f64, at_ms: u64) {
        if !self.types.contains_key(kind) && self.types.len() >= MAX_TYPES {
            self.forget_oldest();
        }
        let slot = at_ms / self.step_ms;
        let window = self.types.entry(kind.to_owned()).or_default();
        window.last_ms = window.last_ms.max(at_ms);
        let bucket = &mut window.buckets[(slot % BUCKETS as u64) as usize];
        if bucket.slot > slot {
            // Older than what the bucket now holds (a clock stepped back): it has slid out.
            return;
        }
        if bucket.slot != slot {
            *bucket = Bucket {
                slot,
                count: 0,
                max_severity: f64::NEG_INFINITY,
            };
        }
        bucket.count = bucket.count.saturating_add(1);
        bucket.max_severity = bucket.max_severity.max(severity);
    }

    /// `kind`'s figures in the window ending at `now_ms`, or `None` when it had no incident.
    pub fn stats(&self, kind: &str, now_ms: u64) -> Option<TypeStats> {
        self.types
            .get(kind)
            .and_then(|window| self.stats_of(window, now_ms))
    }

    fn stats_of(&self, window: &TypeWindow, now_ms: u64) -> Option<TypeStats> {
        let newest = now_ms / self.step_ms;
        let oldest = newest.saturating_sub(BUCKETS as u64 - 1);
        let mut stats = TypeStats {
            count: 0,
            max_severity: f64::NEG_INFINITY,
        };
        for bucket in &window.buckets {
            if bucket.count > 0 && (oldest..=newest).contains(&bucket.slot) {
                stats.count = stats.count.saturating_add(bucket.count);
                stats.max_severity = stats.max_severity.max(bucket.max_severity);
            }
        }
        (stats.count > 0).then_some(stats)
    }

    /// Every type with incidents in the window, most incidents first.
    pub fn all(&self, now_ms: u64) -> Vec<(&str, TypeStats)> {
        let mut all: Vec<(&str, TypeStats)> = self
            .types
            .iter()
            .filter_map(|(kind, window)| Some((kind.as_str(), self.stats_of(window, now_ms)?)))
            .collect();
        all.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
        all
    }

    /// What this node gossips: the types with the most incidents first, as many as fit in
    /// `max_bytes` (encoded); types that no longer have any are dropped from memory too.
    pub fn summary(&mut self, now_ms: u64, max_bytes: usize) -> IncidentSummary {
        let horizon = now_ms.saturating_sub(self.window_ms());
        self.types.retain(|_, window| window.last_ms >= horizon);
        let mut summary = IncidentSummary {
            at_ms: now_ms,
            window_sec: (self.window_ms() / 1000) as u32,
            types: Vec::new(),
            truncated: false,
        };
        // A varint count, a length-prefixed name and an f32: the encoded size of one entry; the
        // header is the format byte, two varints and a flag.
        let mut size = 1 + 10 + 5 + 1 + 5;
        for (kind, stats) in self.all(now_ms) {
            let entry = kind.len() + 2 + 5 + 4;
            if size + entry > max_bytes {
                summary.truncated = true;
                break;
            }
            size += entry;
            summary.types.push(TypeCount {
                kind: kind.to_owned(),
                count: stats.count,
                max_severity: stats.max_severity as f32,
            });
        }
        summary
    }

    fn forget_oldest(&mut self) {
        let oldest = self
            .types
            .iter()
            .min_by_key(|(_, window)| window.last_ms)
            .map(|(kind, _)| kind.clone());
        if let Some(kind) = oldest {
            self.types.remove(&kind);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_slide_out_of_the_window() {
        let mut window = IncidentWindow::new(60_000);
        window.record("cpu_spike", 3.0, 1_000);
        window.record("cpu_spike", 7.0, 30_000);
        let stats = window.stats("cpu_spike", 31_000).unwrap();
        assert_eq!(stats.count, 2);
        assert_eq!(stats.max_severity, 7.0);
        // 65 s on, the first one has left; 95 s on, both.
        assert_eq!(window.stats("cpu_spike", 66_000).unwrap().count, 1);
        assert!(window.stats("cpu_spike", 95_000).is_none());
        assert!(window.stats("packet_loss", 31_000).is_none());
    }

    #[test]
    fn the_summary_stays_within_its_bytes_however_many_types() {
        let mut window = IncidentWindow::new(60_000);
        for i in 0..1_000 {
            window.record(&format!("type_{i:04}_with_a_long_name"), 1.0, 1_000);
        }
        assert_eq!(window.types.len(), MAX_TYPES);
        let summary = window.summary(2_000, 512);
        assert!(summary.truncated);
        let encoded = mesh_proto::encode(&summary);
        assert!(encoded.len() <= 512, "{} bytes", encoded.len());
    }
}
