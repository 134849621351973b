//! Derived ids: the same input gives the same id on every node and build, so a resend, a retry
//! or a takeover carries the id the consumer has seen.

/// The id of the action policy `policy_id` at `version` takes on incident `event_id` at `node_id`:
/// derived, not drawn, so deciding the same incident again (a monitor's redelivery after a crash)
/// yields the same id, and the consumer's de-duplication holds across it.
pub fn action_id(node_id: &str, event_id: &str, policy_id: u64, version: u64) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(b"mesh-agent action v1\0");
    ctx.update(node_id.as_bytes());
    ctx.update(b"\0");
    ctx.update(event_id.as_bytes());
    ctx.update(b"\0");
    ctx.update(&policy_id.to_be_bytes());
    ctx.update(&version.to_be_bytes());
    derived_uuid(ctx)
}

/// The id (a UUID of version 8, "custom") made of the first 16 bytes of a SHA-256 over `ctx`:
/// the same on every node and build for the same input.
pub(crate) fn derived_uuid(ctx: ring::digest::Context) -> String {
    let digest = ctx.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::action_id;

    #[test]
    fn action_ids_are_stable_and_distinct() {
        let a = action_id("n1", "e1", 7, 1);
        assert_eq!(a, action_id("n1", "e1", 7, 1));
        assert_ne!(a, action_id("n1", "e1", 7, 2));
        assert_ne!(a, action_id("n1", "e1", 8, 1));
        assert_ne!(a, action_id("n2", "e1", 7, 1));
        assert_ne!(a, action_id("n1", "e2", 7, 1));
        // The separator keeps ("ab", "c") apart from ("a", "bc").
        assert_ne!(action_id("ab", "c", 1, 1), action_id("a", "bc", 1, 1));
        assert_eq!(a.len(), 36);
    }
}
