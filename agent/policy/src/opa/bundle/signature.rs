//! Bundle signatures as OPA makes and checks them (`bundle/verify.go`). `.signatures.json` is
//! `{"signatures": ["<JWT>"]}`: exactly one JWT, signed with a configured key, whose payload
//! lists every file of the bundle (`files: [{name, hash, algorithm}]`) and may carry `keyid` and
//! `scope`. The key is the configured `bundle.keyid`, else the JWT header's `kid`, else the
//! payload's `keyid`; its algorithm is the configured one (a JWT claiming another is refused);
//! the payload's `scope` must equal the key's. Then every file must be listed with its digest
//! (see `hash`), and every listed file must be in the bundle.

use std::collections::BTreeMap;

use base64::Engine as _;
use jsonwebtoken::{DecodingKey, Validation};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::FromDer;

use super::BundleError;
use super::archive::ArchiveFile;
use super::config::BundlesConfig;
use super::hash;

/// The JWS algorithms a key may have (OPA's `keys.<id>.algorithm`; ES512 is not offered by the
/// verifier used here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    HS256,
    HS384,
    HS512,
}

impl Algorithm {
    fn jwt(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as J;
        match self {
            Algorithm::RS256 => J::RS256,
            Algorithm::RS384 => J::RS384,
            Algorithm::RS512 => J::RS512,
            Algorithm::PS256 => J::PS256,
            Algorithm::PS384 => J::PS384,
            Algorithm::PS512 => J::PS512,
            Algorithm::ES256 => J::ES256,
            Algorithm::ES384 => J::ES384,
            Algorithm::HS256 => J::HS256,
            Algorithm::HS384 => J::HS384,
            Algorithm::HS512 => J::HS512,
        }
    }
}

/// One key, ready to verify with.
pub struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
    scope: String,
}

/// What bundles are verified with on this node.
#[derive(Default)]
pub struct Verification {
    keys: BTreeMap<String, Key>,
    keyid: String,
}

impl std::fmt::Debug for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verification")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("keyid", &self.keyid)
            .finish()
    }
}

impl Verification {
    /// Reads the key files of `[bundle.keys]`. An error names the key and the file.
    pub fn load(config: &BundlesConfig) -> Result<Verification, String> {
        if !config.keyid.is_empty() && !config.keys.contains_key(&config.keyid) {
            return Err(format!(
                "bundle.keyid names key {:?}, which is not under [bundle.keys]",
                config.keyid
            ));
        }
        let mut keys = BTreeMap::new();
        for (id, key) in &config.keys {
            let bytes = std::fs::read(&key.key_file).map_err(|err| {
                format!(
                    "bundle.keys.{id}: cannot read key_file {}: {err}",
                    key.key_file.display()
                )
            })?;
            let decoding = decoding_key(key.algorithm, &bytes).map_err(|err| {
                format!(
                    "bundle.keys.{id}: key_file {}: {err}",
                    key.key_file.display()
                )
            })?;
            keys.insert(
                id.clone(),
                Key {
                    algorithm: key.algorithm,
                    key: decoding,
                    scope: key.scope.clone(),
                },
            );
        }
        Ok(Verification {
            keys,
            keyid: config.keyid.clone(),
        })
    }

    /// Verification with the given keys (`(id, algorithm, key bytes as in a key file, scope)`).
    pub fn with_keys(
        keys: &[(&str, Algorithm, &[u8], &str)],
        keyid: &str,
    ) -> Result<Verification, String> {
        let mut out = BTreeMap::new();
        for (id, algorithm, bytes, scope) in keys {
            out.insert(
                (*id).to_owned(),
                Key {
                    algorithm: *algorithm,
                    key: decoding_key(*algorithm, bytes)?,
                    scope: (*scope).to_owned(),
                },
            );
        }
        Ok(Verification {
            keys: out,
            keyid: keyid.to_owned(),
        })
    }

    /// Whether any key is configured: then every bundle must be signed.
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Checks `signatures` (the bytes of `.signatures.json`, if the bundle has one) against
    /// `files` (every other file of the bundle).
    pub fn check(
        &self,
        signatures: Option<&[u8]>,
        files: &[ArchiveFile],
    ) -> Result<(), BundleError> {
        let Some(signatures) = signatures else {
            if self.required() {
                return Err(BundleError::unverified(
                    "bundle missing .signatures.json file (a verification key is configured: \
                     bundle.keys)",
                ));
            }
            return Ok(());
        };
        if !self.required() {
            return Err(BundleError::unverified(
                ".signatures.json: verification key not provided (the bundle is signed, and \
                 this node has no bundle.keys)",
            ));
        }
        let config: SignaturesFile = serde_json::from_slice(signatures).map_err(|err| {
            BundleError::unverified(format!(
                ".signatures.json: bundle load failed on signatures decode: {err}"
            ))
        })?;
        if config.plugin.as_deref().is_some_and(|p| !p.is_empty()) {
            return Err(BundleError::unverified(
                ".signatures.json: names a signing plugin; only OPA's default verifier is supported",
            ));
        }
        let token = match config.signatures.as_slice() {
            [] => {
                return Err(BundleError::unverified(
                    ".signatures.json: missing JWT (expected exactly one)",
                ));
            }
            [token] => token,
            _ => {
                return Err(BundleError::unverified(
                    ".signatures.json: multiple JWTs not supported (expected exactly one)",
                ));
            }
        };
        let payload = self.verify_token(token)?;
        let mut listed: BTreeMap<String, FileInfo> = payload
            .files
            .into_iter()
            .map(|f| (f.name.trim_start_matches('/').to_owned(), f))
            .collect();
        for file in files {
            let Some(info) = listed.remove(&file.path) else {
                return Err(BundleError::unverified(format!(
                    "{}: file not included in bundle signature",
                    file.path
                )));
            };
            if info.algorithm.is_empty() {
                return Err(BundleError::unverified(format!(
                    "{}: no hashing algorithm provided for the file in the bundle signature",
                    file.path
                )));
            }
            let got = hash::file_digest(&info.algorithm, &file.path, &file.bytes)
                .map_err(|err| BundleError::unverified(format!("{}: {err}", file.path)))?;
            if !got.eq_ignore_ascii_case(&info.hash) {
                return Err(BundleError::unverified(format!(
                    "{}: digest mismatch (want: {}, got: {got})",
                    file.path, info.hash
                )));
            }
        }
        if !listed.is_empty() {
            let names: Vec<&str> = listed.keys().map(String::as_str).collect();
            return Err(BundleError::unverified(format!(
                "file(s) [{}] specified in bundle signatures but not found in the target bundle",
                names.join(" ")
            )));
        }
        Ok(())
    }

    fn verify_token(&self, token: &str) -> Result<Payload, BundleError> {
        let unverified =
            |message: String| BundleError::unverified(format!(".signatures.json: {message}"));
        let header = jsonwebtoken::decode_header(token)
            .map_err(|err| unverified(format!("the JWT cannot be read: {err}")))?;
        // The payload's (deprecated) keyid claim is read before verifying, to find the key.
        let claimed_keyid = token
            .split('.')
            .nth(1)
            .and_then(|part| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(part)
                    .ok()
            })
            .and_then(|bytes| serde_json::from_slice::<Payload>(&bytes).ok())
            .and_then(|payload| payload.keyid);
        let keyid = if !self.keyid.is_empty() {
            self.keyid.clone()
        } else if let Some(kid) = header.kid.filter(|k| !k.is_empty()) {
            kid
        } else {
            claimed_keyid.unwrap_or_default()
        };
        if keyid.is_empty() {
            return Err(unverified("verification key ID is empty".into()));
        }
        let key = self.keys.get(&keyid).ok_or_else(|| {
            unverified(format!(
                "verification key corresponding to ID {keyid} not found"
            ))
        })?;
        let mut validation = Validation::new(key.algorithm.jwt());
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let data =
            jsonwebtoken::decode::<Payload>(token, &key.key, &validation).map_err(|err| {
                unverified(format!(
                    "the JWT does not verify with key {keyid} ({:?}): {err}",
                    key.algorithm
                ))
            })?;
        let scope = data.claims.scope.clone().unwrap_or_default();
        if scope != key.scope {
            return Err(unverified("scope mismatch".into()));
        }
        Ok(data.claims)
    }
}

#[derive(Deserialize)]
struct SignaturesFile {
    #[serde(default)]
    signatures: Vec<String>,
    #[serde(default)]
    plugin: Option<String>,
}

/// The JWT's payload (OPA's `DecodedSignature`).
#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(default)]
    files: Vec<FileInfo>,
    #[serde(default)]
    keyid: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

#[derive(Debug, Deserialize)]
struct FileInfo {
    name: String,
    #[serde(default)]
    hash: String,
    #[serde(default)]
    algorithm: String,
}

/// The key to verify with, from a key file's bytes.
fn decoding_key(algorithm: Algorithm, bytes: &[u8]) -> Result<DecodingKey, String> {
    use Algorithm::*;
    if matches!(algorithm, HS256 | HS384 | HS512) {
        if bytes.is_empty() {
            return Err("the shared secret is empty".into());
        }
        return Ok(DecodingKey::from_secret(bytes));
    }
    let block = pem::parse(bytes).map_err(|err| {
        format!("not a PEM public key or certificate ({algorithm:?} needs one): {err}")
    })?;
    let rsa = matches!(algorithm, RS256 | RS384 | RS512 | PS256 | PS384 | PS512);
    let spki_bits = |der: &[u8]| -> Result<Vec<u8>, String> {
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
            .map_err(|err| format!("not a public key: {err}"))?;
        Ok(spki.subject_public_key.data.to_vec())
    };
    let raw = match block.tag() {
        "PUBLIC KEY" => spki_bits(block.contents())?,
        "RSA PUBLIC KEY" if rsa => block.contents().to_vec(),
        "CERTIFICATE" => {
            let (_, cert) = x509_parser::certificate::X509Certificate::from_der(block.contents())
                .map_err(|err| format!("not a certificate: {err}"))?;
            cert.tbs_certificate
                .subject_pki
                .subject_public_key
                .data
                .to_vec()
        }
        other => {
            return Err(format!(
                "a PEM block of type {other:?} is not a public key for {algorithm:?} (PUBLIC KEY, \
                 RSA PUBLIC KEY or CERTIFICATE are)"
            ));
        }
    };
    Ok(if rsa {
        DecodingKey::from_rsa_der(&raw)
    } else {
        DecodingKey::from_ec_der(&raw)
    })
}
