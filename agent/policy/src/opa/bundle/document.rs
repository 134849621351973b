//! How a bundle is stored: a `DocKind::Bundle` document named by the bundle, whose body is a JSON
//! text holding the archive exactly as it was pushed or downloaded (base64), so that every node
//! that receives it verifies the signed bytes itself, and what its poller needs to ask the bundle
//! server again (the ETag, the URL) whichever node polls next.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::BundleError;

/// The body of a bundle document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBundle {
    /// The `.tar.gz`, base64 (standard alphabet, padded).
    pub archive: String,
    /// The revision its manifest names (also inside the archive; here for listings).
    #[serde(default)]
    pub revision: String,
    /// `push`, or the URL it was downloaded from.
    #[serde(default)]
    pub source: String,
    /// The bundle server's ETag for this archive, sent back as `If-None-Match`.
    #[serde(default)]
    pub etag: String,
    /// When it was pushed or downloaded (RFC 3339).
    #[serde(default)]
    pub downloaded_at: String,
}

impl StoredBundle {
    pub fn new(archive: &[u8], revision: &str, source: &str, etag: &str, at: &str) -> StoredBundle {
        StoredBundle {
            archive: base64::engine::general_purpose::STANDARD.encode(archive),
            revision: revision.to_owned(),
            source: source.to_owned(),
            etag: etag.to_owned(),
            downloaded_at: at.to_owned(),
        }
    }

    /// Reads a stored body.
    pub fn parse(body: &str) -> Result<StoredBundle, BundleError> {
        serde_json::from_str(body).map_err(|err| {
            BundleError::invalid(format!("the stored bundle document is not readable: {err}"))
        })
    }

    pub fn to_json(&self) -> String {
        // Serializing strings into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The archive's bytes.
    pub fn archive(&self) -> Result<Vec<u8>, BundleError> {
        Self::decode_archive(&self.archive)
    }

    /// An archive as bundle documents and rollouts carry it (base64), in bytes.
    pub fn decode_archive(base64_text: &str) -> Result<Vec<u8>, BundleError> {
        base64::engine::general_purpose::STANDARD
            .decode(base64_text)
            .map_err(|err| {
                BundleError::invalid(format!("the stored bundle's archive is not base64: {err}"))
            })
    }

    /// Bytes of an archive as bundle documents and rollouts carry it.
    pub fn encode_archive(archive: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(archive)
    }
}
