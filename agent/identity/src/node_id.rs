//! What a node id may be. It names files and certificates, so it is checked wherever one enters:
//! the config, `mesh-agent certs issue`.

/// A node id is used in file names and certificates: letters, digits, `-`, `_`, `.`; 1-128 long.
pub fn validate_node_id(node_id: &str) -> Result<(), String> {
    if node_id.is_empty() || node_id.len() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    if let Some(bad) = node_id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
    {
        return Err(format!(
            "contains `{bad}`; use letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(())
}
