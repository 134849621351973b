//! Ids for events that come without one: the same bytes from the same source are one incident only
//! within a de-duplication window (`dedup_window_sec`, as NATS JetStream's duplicate window).
//!
//! A retry or a redelivery inside the window gets the id the first copy got, so its actions keep
//! their `action_id`s and P0.3 drops the duplicate; the same bytes after the window are a new
//! incident (a real recurrence) with a new id. The id carries the content hash and the time the
//! window opened (`evt-<hash>-<ms>`), so after a restart the windows still open are rebuilt from
//! the audit ring, which holds every recorded event's id: a redelivery of an incident recorded
//! before a crash keeps its id.
//!
//! The table is bounded ([`MAX_ENTRIES`]): at more distinct id-less events per window than that,
//! the oldest windows are forgotten early (a redelivery of one of those becomes a new incident).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Distinct id-less events remembered at once (about 100 bytes each).
pub const MAX_ENTRIES: usize = 100_000;

/// Content hash -> id, for the windows still open.
pub struct Dedup {
    window_ms: u64,
    inner: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    ids: HashMap<[u8; 16], (String, u64)>,
    /// Hashes in the order their windows opened (oldest first), for expiry.
    opened: VecDeque<([u8; 16], u64)>,
}

impl Dedup {
    pub fn new(window: Duration) -> Dedup {
        Dedup {
            window_ms: window.as_millis() as u64,
            inner: Mutex::new(Windows::default()),
        }
    }

    /// The id of an event without one, arriving at `now_ms` from `source` with these bytes.
    pub fn id_for(&self, source: &str, bytes: &[u8], now_ms: u64) -> String {
        let hash = content_hash(source, bytes);
        let mut windows = self.lock();
        windows.expire(now_ms, self.window_ms);
        // Re-opened windows may sit out of order in `opened`: check the age of a hit itself.
        if let Some((id, opened_ms)) = windows.ids.get(&hash)
            && now_ms.saturating_sub(*opened_ms) < self.window_ms
        {
            return id.clone();
        }
        let id = format_id(&hash, now_ms);
        windows.open(hash, id.clone(), now_ms);
        id
    }

    /// Re-opens the window of an id this table issued (read back from the audit ring at start).
    pub fn remember(&self, id: &str, now_ms: u64) {
        let Some((hash, opened_ms)) = parse_id(id) else {
            return;
        };
        if now_ms.saturating_sub(opened_ms) >= self.window_ms {
            return;
        }
        let mut windows = self.lock();
        if !windows.ids.contains_key(&hash) {
            windows.open(hash, id.to_owned(), opened_ms);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Windows {
    fn open(&mut self, hash: [u8; 16], id: String, opened_ms: u64) {
        if self.ids.len() >= MAX_ENTRIES
            && let Some((oldest, _)) = self.opened.pop_front()
        {
            self.ids.remove(&oldest);
        }
        self.ids.insert(hash, (id, opened_ms));
        self.opened.push_back((hash, opened_ms));
    }

    fn expire(&mut self, now_ms: u64, window_ms: u64) {
        while let Some(&(hash, opened_ms)) = self.opened.front() {
            if now_ms.saturating_sub(opened_ms) < window_ms {
                break;
            }
            self.opened.pop_front();
            // Only if the entry is still this window's (re-opened hashes are newer).
            if self.ids.get(&hash).is_some_and(|(_, at)| *at == opened_ms) {
                self.ids.remove(&hash);
            }
        }
    }
}

fn content_hash(source: &str, bytes: &[u8]) -> [u8; 16] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(source.as_bytes());
    ctx.update(b"\0");
    ctx.update(bytes);
    let digest = ctx.finish();
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&digest.as_ref()[..16]);
    hash
}

fn format_id(hash: &[u8; 16], opened_ms: u64) -> String {
    let mut id = String::with_capacity(4 + 32 + 1 + 13);
    id.push_str("evt-");
    for byte in hash {
        id.push_str(&format!("{byte:02x}"));
    }
    id.push('-');
    id.push_str(&opened_ms.to_string());
    id
}

fn parse_id(id: &str) -> Option<([u8; 16], u64)> {
    let rest = id.strip_prefix("evt-")?;
    let (hex, ms) = rest.split_once('-')?;
    if hex.len() != 32 {
        return None;
    }
    let mut hash = [0u8; 16];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some((hash, ms.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(120);

    #[test]
    fn same_bytes_are_one_incident_within_the_window_only() {
        let dedup = Dedup::new(WINDOW);
        let first = dedup.id_for("incident/detected", b"{}", 1_000);
        assert_eq!(
            first,
            dedup.id_for("incident/detected", b"{}", 1_000 + 119_999)
        );
        assert_ne!(first, dedup.id_for("anomaly/detected", b"{}", 2_000));
        assert_ne!(first, dedup.id_for("incident/detected", b"{ }", 2_000));
        // The separator keeps ("ab", "c") apart from ("a", "bc").
        assert_ne!(dedup.id_for("ab", b"c", 0), dedup.id_for("a", b"bc", 0));
        let later = dedup.id_for("incident/detected", b"{}", 1_000 + 120_000);
        assert_ne!(
            first, later,
            "a recurrence after the window is a new incident"
        );
        assert_eq!(
            later,
            dedup.id_for("incident/detected", b"{}", 1_000 + 200_000)
        );
    }

    #[test]
    fn windows_survive_a_restart_through_their_ids() {
        let before = Dedup::new(WINDOW);
        let id = before.id_for("incident/detected", b"{\"a\":1}", 50_000);
        let after = Dedup::new(WINDOW);
        after.remember(&id, 60_000);
        after.remember("not-ours", 60_000);
        assert_eq!(after.id_for("incident/detected", b"{\"a\":1}", 61_000), id);
        let expired = Dedup::new(WINDOW);
        expired.remember(&id, 50_000 + 120_000);
        assert!(expired.is_empty());
    }

    #[test]
    fn the_table_is_bounded() {
        let dedup = Dedup::new(WINDOW);
        for i in 0..(MAX_ENTRIES + 10) {
            dedup.id_for("s", &i.to_le_bytes(), 0);
        }
        assert_eq!(dedup.len(), MAX_ENTRIES);
    }
}
