//! Bundle configuration, two sections: `[bundle]`, how every bundle is read and verified (the
//! limits, and the keys, OPA's `keys`), and `[[bundles]]`, the bundle servers to poll (OPA's
//! `bundles` with `polling`), one entry each.
//!
//! ```toml
//! [bundle]
//! keyid = "global_key"          # optional: the key every bundle is verified with (else the JWT's kid)
//! [bundle.keys.global_key]
//! algorithm = "ES256"           # RS256/384/512, PS256/384/512, ES256/384, HS256/384/512
//! key_file = "/etc/mesh-agent/bundle-key.pem"   # PEM public key or certificate; HS*: the secret
//! scope = "write"               # optional: the scope the signature must carry
//!
//! [[bundles]]
//! name = "authz"
//! url = "https://bundles.example/authz.tar.gz"
//! min_delay_sec = 60
//! max_delay_sec = 120
//! token_file = "/etc/mesh-agent/bundle-server.token"   # optional bearer token
//! ca_file = "/etc/mesh-agent/bundle-server-ca.pem"     # HTTPS: the CA to trust
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use agent_base::InvalidSetting;

use super::signature::Algorithm;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BundlesConfig {
    /// Largest bundle archive (compressed) accepted, pushed or downloaded.
    pub max_bytes: u64,
    /// Most bytes a bundle's archive may unpack to (files and tar headers): a gzip bomb stops here.
    pub max_uncompressed_bytes: u64,
    /// Most files a bundle may hold.
    pub max_files: usize,
    /// The key id every bundle is verified with (OPA's `signing.keyid`); empty: the JWT's `kid`.
    pub keyid: String,
    /// Verification keys by key id. With any key configured, an unsigned bundle is refused.
    pub keys: BTreeMap<String, KeyConfig>,
}

/// One verification key (OPA's `keys.<id>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub algorithm: Algorithm,
    /// PEM (`PUBLIC KEY`, `RSA PUBLIC KEY` or `CERTIFICATE`); for HS* the shared secret, as is.
    pub key_file: PathBuf,
    /// The scope a signature made with this key must carry (`""`: none).
    #[serde(default)]
    pub scope: String,
}

/// One bundle to poll (OPA's `bundles.<name>` with `polling`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    /// `http://` or `https://` URL of the `.tar.gz`.
    pub url: String,
    #[serde(default = "default_min_delay")]
    pub min_delay_sec: u64,
    #[serde(default = "default_max_delay")]
    pub max_delay_sec: u64,
    /// A file holding the bearer token sent to the bundle server.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// PEM CA certificate(s) an `https://` server is checked against (the agent has no built-in
    /// roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_min_delay() -> u64 {
    60
}

fn default_max_delay() -> u64 {
    120
}

impl SourceConfig {
    pub fn min_delay(&self) -> Duration {
        Duration::from_secs(self.min_delay_sec)
    }

    pub fn max_delay(&self) -> Duration {
        Duration::from_secs(self.max_delay_sec)
    }
}

impl Default for BundlesConfig {
    fn default() -> BundlesConfig {
        BundlesConfig {
            max_bytes: 8 * 1024 * 1024,
            max_uncompressed_bytes: 64 * 1024 * 1024,
            max_files: 1_000,
            keyid: String::new(),
            keys: BTreeMap::new(),
        }
    }
}

impl BundlesConfig {
    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        // A bundle travels whole in one store document, base64 (4/3), and a pull response
        // carries at most 64 MiB: 32 MiB of archive leaves room.
        if !(1024..=32 * 1024 * 1024).contains(&self.max_bytes) {
            return Err(InvalidSetting::new(
                "bundle.max_bytes",
                "must be between 1024 and 33554432 (32 MiB): a bundle travels whole in one store document, and a mesh pull carries at most 64 MiB",
            ));
        }
        if self.max_uncompressed_bytes < self.max_bytes
            || self.max_uncompressed_bytes > 1024 * 1024 * 1024
        {
            return Err(InvalidSetting::new(
                "bundle.max_uncompressed_bytes",
                "must be at least bundle.max_bytes and at most 1073741824 (1 GiB)",
            ));
        }
        if !(1..=100_000).contains(&self.max_files) {
            return Err(InvalidSetting::new(
                "bundle.max_files",
                "must be between 1 and 100000",
            ));
        }
        if let Some(id) = self.keys.keys().find(|id| id.is_empty()) {
            return Err(InvalidSetting::new(
                "bundle.keys",
                format!("a key id must not be empty ({id:?})"),
            ));
        }
        Ok(())
    }
}

/// Checks the `[[bundles]]` entries: names, URLs, delays.
pub fn validate_sources(sources: &[SourceConfig]) -> Result<(), InvalidSetting> {
    let mut names = std::collections::HashSet::new();
    for (index, source) in sources.iter().enumerate() {
        if let Err(message) = super::validate_name(&source.name) {
            return Err(InvalidSetting::new(
                "bundles.name",
                format!("(source {index}) {message}"),
            ));
        }
        if !names.insert(source.name.as_str()) {
            return Err(InvalidSetting::new(
                "bundles.name",
                format!("{:?} is configured twice", source.name),
            ));
        }
        let https = source.url.starts_with("https://");
        if !https && !source.url.starts_with("http://") {
            return Err(InvalidSetting::new(
                "bundles.url",
                format!(
                    "(bundle {:?}) must be an http:// or https:// URL, found {:?}",
                    source.name, source.url
                ),
            ));
        }
        if https && source.ca_file.is_none() {
            return Err(InvalidSetting::new(
                "bundles.ca_file",
                format!(
                    "(bundle {:?}) is needed for an https:// URL: the agent trusts no built-in roots",
                    source.name
                ),
            ));
        }
        if source.min_delay_sec == 0 || source.max_delay_sec < source.min_delay_sec {
            return Err(InvalidSetting::new(
                "bundles.min_delay_sec",
                format!(
                    "(bundle {:?}) min_delay_sec must be at least 1 and at most max_delay_sec",
                    source.name
                ),
            ));
        }
    }
    Ok(())
}

/// The names of the bundles this node must have activated before `GET /health?bundles=true`
/// answers 200 (OPA: the configured bundles).
pub fn configured_names(sources: &[SourceConfig]) -> Vec<String> {
    sources.iter().map(|s| s.name.clone()).collect()
}
