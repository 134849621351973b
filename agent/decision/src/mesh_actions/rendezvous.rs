//! Who acts for the mesh: rendezvous (highest random weight) hashing of (rule, incident key,
//! window) over the alive members. Every node that sees the same alive set ranks it the same way,
//! with no message exchanged; when the first-ranked node dies, the next one is first.
//!
//! The weight is SHA-256 over fixed-width big-endian integers and length-separated strings: the
//! same on every build, platform and Rust release (std's `Hash` promises none of that).

use crate::decider::derived_uuid;

/// The weight of `node` for one mesh action.
pub fn weight(policy_id: u64, key: &str, window: u64, node: &str) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"mesh-agent rendezvous v1\0");
    ctx.update(&policy_id.to_be_bytes());
    ctx.update(&(key.len() as u64).to_be_bytes());
    ctx.update(key.as_bytes());
    ctx.update(&window.to_be_bytes());
    ctx.update(node.as_bytes());
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// `members` from the one that acts first to the last; ties (never seen in practice) by node id.
pub fn ranking<'a>(members: &'a [String], policy_id: u64, key: &str, window: u64) -> Vec<&'a str> {
    let mut ranked: Vec<(u64, &str)> = members
        .iter()
        .map(|node| (weight(policy_id, key, window, node), node.as_str()))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked.into_iter().map(|(_, node)| node).collect()
}

/// The member that acts: the first of [`ranking`].
pub fn actor<'a>(members: &'a [String], policy_id: u64, key: &str, window: u64) -> Option<&'a str> {
    members
        .iter()
        .map(|node| (weight(policy_id, key, window, node), node.as_str()))
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)))
        .map(|(_, node)| node)
}

/// The id of the mesh action of `policy_id` for `key` in `window`: the same on every node, so a
/// takeover, or two sides of a partition, send the same action, which the consumer de-duplicates.
pub fn mesh_action_id(policy_id: u64, key: &str, window: u64) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"mesh-agent mesh action v1\0");
    ctx.update(&policy_id.to_be_bytes());
    ctx.update(&(key.len() as u64).to_be_bytes());
    ctx.update(key.as_bytes());
    ctx.update(&window.to_be_bytes());
    derived_uuid(ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_weight_is_pinned() {
        // Computed apart from this code (Python's hashlib over the same bytes); a change here
        // means nodes of two builds would pick different actors.
        assert_eq!(weight(1, "k", 1, "n1"), 0x83c0_de21_1429_074a);
        assert_eq!(
            mesh_action_id(1, "cpu_spike", 1),
            mesh_action_id(1, "cpu_spike", 1)
        );
        assert_ne!(
            mesh_action_id(1, "cpu_spike", 1),
            mesh_action_id(1, "cpu_spike", 2)
        );
    }

    proptest! {
        /// Every node that sees the same alive set, in whatever order it lists it, picks the same
        /// actor, and the actor is one of the members; without it, the next-ranked one acts.
        #[test]
        fn the_same_alive_set_gives_the_same_actor(
            members in proptest::collection::btree_set("[a-z0-9-]{1,12}", 1..40),
            policy_id in any::<u64>(),
            key in "[a-z_]{0,16}",
            window in any::<u64>(),
            rotation in any::<usize>(),
        ) {
            let members: Vec<String> = members.into_iter().collect();
            let mut shuffled = members.clone();
            let len = shuffled.len();
            shuffled.rotate_left(rotation % len);
            shuffled.reverse();
            let a = actor(&members, policy_id, &key, window);
            let b = actor(&shuffled, policy_id, &key, window);
            prop_assert_eq!(a, b);
            let ranked = ranking(&members, policy_id, &key, window);
            prop_assert_eq!(Some(ranked[0]), a);
            let without: Vec<String> = members.iter().filter(|m| Some(m.as_str()) != a).cloned().collect();
            if !without.is_empty() {
                prop_assert_eq!(actor(&without, policy_id, &key, window), Some(ranked[1]));
            }
        }
    }
}
