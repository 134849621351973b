//! The decision cache: answers keyed by (policy set revision, path, input), for a time.
//!
//! The revision of the set that answered is part of the key, so a decision made before a module or
//! data change can never answer after it: the new set has a new revision. The input is keyed by its
//! canonical JSON text (object keys sorted), so equal inputs hit whatever their formatting was.
//! Errors are never cached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::Cache;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    revision: u64,
    path: String,
    input: String,
}

#[derive(Clone)]
struct Entry {
    at: Instant,
    result: Option<Arc<Value>>,
}

/// Bounded, time-limited decisions; disabled when the TTL or the size is 0.
pub struct DecisionCache {
    entries: Option<Cache<Key, Entry>>,
    ttl: Duration,
}

/// A lookup's key, computed once and reused to store the answer on a miss.
pub struct Lookup(Key);

impl DecisionCache {
    pub fn new(ttl: Duration, capacity: usize) -> DecisionCache {
        let enabled = !ttl.is_zero() && capacity > 0;
        DecisionCache {
            entries: enabled.then(|| Cache::new(capacity)),
            ttl,
        }
    }

    pub fn enabled(&self) -> bool {
        self.entries.is_some()
    }

    pub fn key(revision: u64, path: &str, input: Option<&Value>) -> Lookup {
        Lookup(Key {
            revision,
            path: path.to_owned(),
            // serde_json's maps are sorted (no `preserve_order`), so this text is canonical.
            input: input.map_or_else(String::new, Value::to_string),
        })
    }

    /// The cached answer, if fresh: `Some(None)` is a cached "undefined".
    pub fn get(&self, lookup: &Lookup) -> Option<Option<Arc<Value>>> {
        let entries = self.entries.as_ref()?;
        let entry = entries.get(&lookup.0)?;
        (entry.at.elapsed() < self.ttl).then_some(entry.result)
    }

    pub fn put(&self, lookup: Lookup, result: Option<Arc<Value>>) {
        if let Some(entries) = &self.entries {
            entries.insert(
                lookup.0,
                Entry {
                    at: Instant::now(),
                    result,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hits_only_the_same_revision_path_and_input() {
        let cache = DecisionCache::new(Duration::from_secs(60), 100);
        let input = json!({"b": 1, "a": [1, 2]});
        cache.put(
            DecisionCache::key(1, "data.x", Some(&input)),
            Some(Arc::new(json!(true))),
        );
        let reordered: Value = serde_json::from_str(r#"{"a":[1,2],"b":1}"#).unwrap();
        assert_eq!(
            cache.get(&DecisionCache::key(1, "data.x", Some(&reordered))),
            Some(Some(Arc::new(json!(true))))
        );
        assert_eq!(
            cache.get(&DecisionCache::key(2, "data.x", Some(&input))),
            None,
            "new revision"
        );
        assert_eq!(
            cache.get(&DecisionCache::key(1, "data.y", Some(&input))),
            None
        );
        assert_eq!(cache.get(&DecisionCache::key(1, "data.x", None)), None);
        cache.put(DecisionCache::key(1, "data.u", None), None);
        assert_eq!(
            cache.get(&DecisionCache::key(1, "data.u", None)),
            Some(None),
            "undefined is cached"
        );
    }

    #[test]
    fn expires_and_can_be_off() {
        let cache = DecisionCache::new(Duration::from_millis(1), 100);
        cache.put(DecisionCache::key(1, "p", None), Some(Arc::new(json!(1))));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(cache.get(&DecisionCache::key(1, "p", None)), None);

        let off = DecisionCache::new(Duration::ZERO, 100);
        off.put(DecisionCache::key(1, "p", None), Some(Arc::new(json!(1))));
        assert!(!off.enabled());
        assert_eq!(off.get(&DecisionCache::key(1, "p", None)), None);
    }
}
