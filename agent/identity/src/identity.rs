//! A node's certificate and key on disk ([`TlsFiles`]), signing the changes this node authors
//! ([`Signer`]), and checking other nodes' certificates and signatures against the mesh CA
//! ([`Verifier`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use mesh_proto::SignedChange;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor, UnixTime};

/// The CA certificate's file name in a TLS directory.
pub const CA_FILE: &str = "ca.pem";

/// Why identity material could not be used, or a peer's did not check out.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("certificate of `{node}` does not chain to the mesh CA: {reason}")]
    Untrusted { node: String, reason: String },
    #[error("certificate presented for `{claimed}` is not issued to that node id")]
    WrongNode { claimed: String },
    #[error("no certificate known for author `{node}`")]
    UnknownAuthor { node: String },
    #[error("signature of `{key}` by `{author}` does not verify")]
    BadSignature { key: String, author: String },
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// This node's certificate, key and mesh CA, read from a TLS directory.
pub struct TlsFiles {
    pub ca: CertificateDer<'static>,
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl TlsFiles {
    /// Reads `ca.pem`, `<node_id>.pem` and `<node_id>.key` from `dir`.
    pub fn read(dir: &Path, node_id: &str) -> Result<TlsFiles, IdentityError> {
        let ca_path = dir.join(CA_FILE);
        let cert_path = dir.join(format!("{node_id}.pem"));
        let key_path = dir.join(format!("{node_id}.key"));
        Ok(TlsFiles {
            ca: read_cert(&ca_path)?,
            cert: read_cert(&cert_path)?,
            key: PrivateKeyDer::from_pem_file(&key_path)
                .map_err(|err| pem_error(&key_path, err))?,
        })
    }
}

fn read_cert(path: &Path) -> Result<CertificateDer<'static>, IdentityError> {
    CertificateDer::from_pem_file(path).map_err(|err| pem_error(path, err))
}

fn pem_error(path: &Path, err: rustls_pki_types::pem::Error) -> IdentityError {
    match err {
        rustls_pki_types::pem::Error::Io(io) => IdentityError::Read {
            path: path.to_owned(),
            message: io.to_string(),
        },
        other => IdentityError::Invalid {
            path: path.to_owned(),
            message: format!("not a PEM certificate or key: {other:?}"),
        },
    }
}

/// Signs the changes this node authors with its certificate's key.
pub struct Signer {
    node_id: String,
    cert: CertificateDer<'static>,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Signer {
    /// A signer for `node_id` from its key (PKCS#8, ECDSA P-256: what `certs issue` writes).
    pub fn new(node_id: &str, files: &TlsFiles) -> Result<Signer, IdentityError> {
        let rng = SystemRandom::new();
        let PrivateKeyDer::Pkcs8(pkcs8) = &files.key else {
            return Err(IdentityError::Sign(
                "the node key is not PKCS#8 (issue it with `mesh-agent certs issue`)".into(),
            ));
        };
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &rng,
        )
        .map_err(|err| IdentityError::Sign(format!("the node key is not ECDSA P-256: {err}")))?;
        Ok(Signer {
            node_id: node_id.to_owned(),
            cert: files.cert.clone(),
            key,
            rng,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node certificate (DER), which peers need to check this node's signatures.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, IdentityError> {
        self.key
            .sign(&self.rng, message)
            .map(|sig| sig.as_ref().to_vec())
            .map_err(|_| IdentityError::Sign("ECDSA signing failed".into()))
    }
}

/// Checks node certificates against the mesh CA and change signatures against their authors'
/// certificates. Remembers certificates it has checked.
pub struct Verifier {
    ca: TrustAnchor<'static>,
    checked: Mutex<HashMap<String, Vec<u8>>>,
}

impl Verifier {
    pub fn new(ca: &CertificateDer<'_>) -> Result<Verifier, IdentityError> {
        let anchor = webpki::anchor_from_trusted_cert(ca)
            .map_err(|err| IdentityError::Invalid {
                path: PathBuf::from(CA_FILE),
                message: format!("not a usable CA certificate: {err}"),
            })?
            .to_owned();
        Ok(Verifier {
            ca: anchor,
            checked: Mutex::new(HashMap::new()),
        })
    }

    /// Checks that `cert_der` chains to the mesh CA and is issued to `node_id`.
    pub fn check_node_cert(&self, node_id: &str, cert_der: &[u8]) -> Result<(), IdentityError> {
        let der = CertificateDer::from(cert_der);
        let cert =
            webpki::EndEntityCert::try_from(&der).map_err(|err| IdentityError::Untrusted {
                node: node_id.to_owned(),
                reason: err.to_string(),
            })?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(&self.ca),
            &[],
            UnixTime::now(),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|err| IdentityError::Untrusted {
            node: node_id.to_owned(),
            reason: err.to_string(),
        })?;
        let name = ServerName::try_from(node_id).map_err(|_| IdentityError::WrongNode {
            claimed: node_id.to_owned(),
        })?;
        cert.verify_is_valid_for_subject_name(&name)
            .map_err(|_| IdentityError::WrongNode {
                claimed: node_id.to_owned(),
            })
    }

    /// Checks `cert_der` for `node_id` and remembers it for [`verify_change`](Self::verify_change).
    pub fn learn(&self, node_id: &str, cert_der: &[u8]) -> Result<(), IdentityError> {
        if self
            .lock()
            .get(node_id)
            .is_some_and(|known| known == cert_der)
        {
            return Ok(());
        }
        self.check_node_cert(node_id, cert_der)?;
        self.lock().insert(node_id.to_owned(), cert_der.to_vec());
        Ok(())
    }

    /// The checked certificate of `node_id`, if any.
    pub fn cert_of(&self, node_id: &str) -> Option<Vec<u8>> {
        self.lock().get(node_id).cloned()
    }

    /// Checks a change's signature against its author's (already learned) certificate.
    pub fn verify_change(&self, change: &SignedChange) -> Result<(), IdentityError> {
        let author = change.item.author();
        let key = change.item.key();
        let cert_der = self
            .cert_of(author)
            .ok_or_else(|| IdentityError::UnknownAuthor {
                node: author.to_owned(),
            })?;
        let der = CertificateDer::from(cert_der.as_slice());
        let cert =
            webpki::EndEntityCert::try_from(&der).map_err(|err| IdentityError::Untrusted {
                node: author.to_owned(),
                reason: err.to_string(),
            })?;
        let message = SignedChange::signed_bytes(&change.item, change.deleted);
        cert.verify_signature(webpki::ring::ECDSA_P256_SHA256, &message, &change.signature)
            .map_err(|_| IdentityError::BadSignature {
                key,
                author: author.to_owned(),
            })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        // The map is only ever inserted into; a panic elsewhere cannot leave it half-written.
        self.checked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::{Hlc, PolicyRecord, ReplicaItem};

    fn change(author: &str) -> SignedChange {
        SignedChange {
            item: ReplicaItem::Policy(PolicyRecord {
                id: 1,
                name: "p".into(),
                description: String::new(),
                definition_json: "{}".into(),
                active: true,
                priority: 0,
                version: 1,
                created_at_us: 0,
                updated_at_us: 0,
                stamp: Hlc::default(),
                author: author.into(),
            }),
            deleted: false,
            signature: Vec::new(),
        }
    }

    fn sign(signer: &Signer, mut change: SignedChange) -> SignedChange {
        change.signature = signer
            .sign(&SignedChange::signed_bytes(&change.item, change.deleted))
            .unwrap();
        change
    }

    #[test]
    fn signatures_verify_only_for_the_signed_change_and_the_mesh_ca() {
        let dir = tempfile::tempdir().unwrap();
        crate::certs::init(dir.path(), false).unwrap();
        crate::certs::issue(dir.path(), "node-a", 30).unwrap();
        crate::certs::issue(dir.path(), "node-b", 30).unwrap();
        let a = TlsFiles::read(dir.path(), "node-a").unwrap();
        let b = TlsFiles::read(dir.path(), "node-b").unwrap();
        let signer = Signer::new("node-a", &a).unwrap();
        let verifier = Verifier::new(&a.ca).unwrap();

        let signed = sign(&signer, change("node-a"));
        // Unknown author first.
        assert!(matches!(
            verifier.verify_change(&signed),
            Err(IdentityError::UnknownAuthor { .. })
        ));
        // A certificate issued to another node cannot be learned under this id.
        assert!(matches!(
            verifier.learn("node-a", &b.cert),
            Err(IdentityError::WrongNode { .. })
        ));
        verifier.learn("node-a", &a.cert).unwrap();
        verifier.verify_change(&signed).unwrap();

        let mut tampered = signed.clone();
        tampered.deleted = true;
        assert!(matches!(
            verifier.verify_change(&tampered),
            Err(IdentityError::BadSignature { .. })
        ));

        // A CA of another mesh: its node certificates do not chain.
        let other = tempfile::tempdir().unwrap();
        crate::certs::init(other.path(), false).unwrap();
        crate::certs::issue(other.path(), "node-c", 30).unwrap();
        let c = TlsFiles::read(other.path(), "node-c").unwrap();
        assert!(matches!(
            verifier.learn("node-c", &c.cert),
            Err(IdentityError::Untrusted { .. })
        ));
    }
}
