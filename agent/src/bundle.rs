//! `mesh-agent bundle push FILE --name NAME`: sends an OPA bundle to a running agent
//! (`PUT /v1/bundles/{name}`), which verifies it, activates it, and rolls it out to the mesh.

use std::path::Path;

use anyhow::Context;

use crate::status::{Client, Target};

/// Pushes `file` as bundle `name`; returns the revision activated.
pub fn push(target: &Target, file: &Path, name: &str) -> anyhow::Result<String> {
    agent_policy::opa::bundle::validate_name(name).map_err(anyhow::Error::msg)?;
    let archive = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let client = Client::new(target)?;
    let answer = client.put(&format!("/v1/bundles/{name}"), archive)?;
    Ok(answer["result"]["revision"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}
