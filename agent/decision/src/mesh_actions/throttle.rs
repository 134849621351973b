//! Throttling: a rule's cooldown and rate limit per incident key, so a flapping incident does not
//! fire the same remediation again and again. For a mesh-scoped rule the firings counted are the
//! whole mesh's (this node's, and what peers gossip they sent).

use std::collections::{HashMap, VecDeque};

use agent_engine::CompiledPolicy;

/// Keys remembered at most; past it, the ones that fired longest ago are forgotten.
const MAX_KEYS: usize = 10_000;
/// Firings remembered per key at most (a rate limit above this counts at most this many).
const MAX_PER_KEY: usize = agent_engine::MAX_RATE_LIMIT as usize;

/// When each (rule, incident key) fired on this node.
#[derive(Debug, Default)]
pub struct Throttle {
    fired: HashMap<(u64, String), VecDeque<u64>>,
}

impl Throttle {
    /// Why `policy` may not fire for `key` at `now_ms`, counting this node's firings and
    /// `others` (firing times elsewhere in the mesh); `None` when it may.
    pub fn check(
        &self,
        policy: &CompiledPolicy,
        key: &str,
        now_ms: u64,
        others: impl IntoIterator<Item = u64>,
    ) -> Option<String> {
        let mine = self
            .fired
            .get(&(policy.id, key.to_owned()))
            .into_iter()
            .flatten()
            .copied();
        let times: Vec<u64> = mine.chain(others).filter(|&t| t <= now_ms).collect();
        if policy.cooldown_ms > 0
            && let Some(last) = times.iter().copied().max()
            && now_ms - last < policy.cooldown_ms
        {
            return Some(format!(
                "cooldown: `{}` fired for `{key}` {:.1} s ago; its cooldown is {} s",
                policy.name,
                (now_ms - last) as f64 / 1000.0,
                policy.cooldown_ms / 1000
            ));
        }
        if let Some(limit) = policy.rate_limit {
            let since = now_ms.saturating_sub(limit.per_sec.saturating_mul(1000));
            let recent = times.iter().filter(|&&t| t > since).count();
            if recent >= limit.max as usize {
                return Some(format!(
                    "rate limit: `{}` fired {recent} times for `{key}` in the last {} s (at most {})",
                    policy.name, limit.per_sec, limit.max
                ));
            }
        }
        None
    }

    /// Notes that `policy_id` fired for `key` at `at_ms`.
    pub fn note(&mut self, policy_id: u64, key: &str, at_ms: u64) {
        if self.fired.len() >= MAX_KEYS && !self.fired.contains_key(&(policy_id, key.to_owned())) {
            self.forget_oldest_half();
        }
        let times = self.fired.entry((policy_id, key.to_owned())).or_default();
        times.push_back(at_ms);
        while times.len() > MAX_PER_KEY {
            times.pop_front();
        }
    }

    /// Undoes a [`note`](Self::note) (a decision that was not recorded).
    pub fn forget(&mut self, policy_id: u64, key: &str, at_ms: u64) {
        let id = (policy_id, key.to_owned());
        if let Some(times) = self.fired.get_mut(&id) {
            if let Some(at) = times.iter().rposition(|&t| t == at_ms) {
                times.remove(at);
            }
            if times.is_empty() {
                self.fired.remove(&id);
            }
        }
    }

    fn forget_oldest_half(&mut self) {
        let mut newest: Vec<u64> = self
            .fired
            .values()
            .map(|t| t.back().copied().unwrap_or(0))
            .collect();
        newest.sort_unstable();
        let median = newest[newest.len() / 2];
        self.fired
            .retain(|_, t| t.back().copied().unwrap_or(0) > median);
    }
}
