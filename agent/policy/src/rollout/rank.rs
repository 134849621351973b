//! The pinned ranking rollouts use: which members are a canary's nodes, and which live member
//! coordinates a rollout (decides when it completes or fails). SHA-256 over the rollout id and the
//! node id, so every node and every build ranks the same way.

use ring::digest::{SHA256, digest};

/// `members` from first to last by rendezvous hash of (`rollout_id`, node id); ties (never, in
/// practice) by node id.
pub fn ranked<'a>(rollout_id: &str, members: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut scored: Vec<([u8; 8], &str)> = members
        .into_iter()
        .map(|node| (score(rollout_id, node), node))
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().map(|(_, node)| node).collect()
}

/// The canary nodes of a rollout: the first `ceil(fraction * n)` members by rank, at least one.
pub fn canary_nodes(rollout_id: &str, members: &[String], fraction: f64) -> Vec<String> {
    let ranked = ranked(rollout_id, members.iter().map(String::as_str));
    let wanted = ((fraction * ranked.len() as f64).ceil() as usize).clamp(1, ranked.len().max(1));
    ranked.into_iter().take(wanted).map(str::to_owned).collect()
}

fn score(rollout_id: &str, node: &str) -> [u8; 8] {
    let mut bytes = Vec::with_capacity(rollout_id.len() + node.len() + 1);
    bytes.extend_from_slice(rollout_id.as_bytes());
    // A separator no id holds, so ("ab", "c") and ("a", "bc") differ.
    bytes.push(0);
    bytes.extend_from_slice(node.as_bytes());
    let hash = digest(&SHA256, &bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_ref()[..8]);
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("edge-{i}")).collect()
    }

    #[test]
    fn the_ranking_is_pinned_and_independent_of_order() {
        let members = members(5);
        let forward = ranked("r-1", members.iter().map(String::as_str));
        let mut reversed = members.clone();
        reversed.reverse();
        assert_eq!(forward, ranked("r-1", reversed.iter().map(String::as_str)));
        // Computed apart (SHA-256 of "r-1\0edge-N", first 8 bytes, descending): if this changes,
        // nodes of two builds would disagree on a canary's nodes.
        assert_eq!(forward, PINNED);
    }

    const PINNED: [&str; 5] = ["edge-3", "edge-1", "edge-5", "edge-4", "edge-2"];

    #[test]
    fn a_canary_takes_its_fraction_rounded_up_and_at_least_one_node() {
        assert_eq!(canary_nodes("r-1", &members(5), 0.2).len(), 1);
        assert_eq!(canary_nodes("r-1", &members(5), 0.3).len(), 2);
        assert_eq!(canary_nodes("r-1", &members(5), 0.0).len(), 1);
        assert_eq!(canary_nodes("r-1", &members(5), 1.0).len(), 5);
        assert_eq!(canary_nodes("r-1", &members(1), 0.1), vec!["edge-1"]);
        // The first-ranked nodes, and a growing fraction only adds nodes.
        let two = canary_nodes("r-1", &members(5), 0.4);
        let three = canary_nodes("r-1", &members(5), 0.6);
        assert!(two.iter().all(|n| three.contains(n)));
    }
}
