//! A node's identity in the mesh: the key it signs its changes with, and the mesh CA it checks
//! its peers' certificates and signatures against.

use std::path::Path;
use std::sync::Arc;

use agent_identity::{Signer, TlsFiles, Verifier};

use crate::error::MeshError;

pub struct Identity {
    pub signer: Arc<Signer>,
    pub verifier: Arc<Verifier>,
}

impl Identity {
    /// The identity in `files` (read from `dir`): fails unless the node's certificate chains to
    /// the mesh CA and was issued to `node_id`.
    pub fn from_files(node_id: &str, dir: &Path, files: &TlsFiles) -> Result<Identity, MeshError> {
        let verifier = Arc::new(Verifier::new(&files.ca)?);
        verifier
            .check_node_cert(node_id, &files.cert)
            .map_err(|cause| MeshError::OwnCertificate {
                dir: dir.display().to_string(),
                cause,
            })?;
        let signer = Arc::new(Signer::new(node_id, files)?);
        Ok(Identity { signer, verifier })
    }
}
