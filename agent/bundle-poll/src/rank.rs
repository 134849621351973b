//! Which node polls a bundle: rendezvous (highest random weight) hashing of (bundle name, node
//! id) over the alive members. Every node that sees the same alive set names the same poller;
//! when it dies, the next-ranked node is first. The weight is SHA-256 over length-separated
//! strings under a fixed context, the same on every build and platform.

/// The weight of `node` for bundle `bundle`.
pub fn weight(bundle: &str, node: &str) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"mesh-agent bundle poller v1\0");
    ctx.update(&(bundle.len() as u64).to_be_bytes());
    ctx.update(bundle.as_bytes());
    ctx.update(&(node.len() as u64).to_be_bytes());
    ctx.update(node.as_bytes());
    let digest = ctx.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// `members` from the one that polls first to the last; ties by node id.
pub fn ranking<'a>(members: &'a [String], bundle: &str) -> Vec<&'a str> {
    let mut ranked: Vec<(u64, &str)> = members
        .iter()
        .map(|node| (weight(bundle, node), node.as_str()))
        .collect();
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    ranked.dedup_by(|a, b| a.1 == b.1);
    ranked.into_iter().map(|(_, node)| node).collect()
}

/// The member that polls `bundle`.
pub fn first<'a>(members: &'a [String], bundle: &str) -> Option<&'a str> {
    ranking(members, bundle).into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ranking_is_pinned_and_independent_of_order() {
        let nodes: Vec<String> = (1..=5).map(|i| format!("node-{i}")).collect();
        let mut reversed = nodes.clone();
        reversed.reverse();
        assert_eq!(ranking(&nodes, "authz"), ranking(&reversed, "authz"));
        // Pinned: a change of the hash would change who polls in a mixed-version mesh.
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"mesh-agent bundle poller v1\0\0\0\0\0\0\0\0\x05authz\0\0\0\0\0\0\0\x06node-1");
        let digest = ctx.finish();
        assert_eq!(
            weight("authz", "node-1"),
            u64::from_be_bytes(digest.as_ref()[..8].try_into().unwrap())
        );
        // Without the first-ranked node, the second is first.
        let order = ranking(&nodes, "authz");
        let rest: Vec<String> = nodes
            .iter()
            .filter(|n| n.as_str() != order[0])
            .cloned()
            .collect();
        assert_eq!(first(&rest, "authz"), Some(order[1]));
        // Bundles spread over the nodes.
        let pollers: std::collections::HashSet<&str> = (0..20)
            .filter_map(|i| first(&nodes, &format!("bundle-{i}")))
            .collect();
        assert!(pollers.len() > 1);
    }
}
