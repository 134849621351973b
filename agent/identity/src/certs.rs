//! Mesh certificates (`mesh-agent certs`): a mesh CA, and node certificates signed by it.
//!
//! A node certificate names its node id twice: as the subject's common name and as a DNS
//! subject-alternative name, so that a peer's id can be read from its certificate and checked
//! against the id it claims. Keys are ECDSA P-256, written with mode 0600.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use crate::validate_node_id;

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

/// How long a CA is valid.
const CA_DAYS: i64 = 3650;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} already exists; pass --force to replace the mesh CA (every node certificate must then be issued again)"
    )]
    Exists(String),
    #[error("node id `{id}` {message}")]
    NodeId { id: String, message: String },
    #[error("{what}: {source}")]
    Rcgen {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
}

fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Rcgen { what, source }
}

/// Creates the mesh CA (`ca.pem`, `ca.key`) in `dir`.
pub fn init(dir: &Path, force: bool) -> Result<(PathBuf, PathBuf), CertError> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    if !force && (cert_path.exists() || key_path.exists()) {
        return Err(CertError::Exists(cert_path.display().to_string()));
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let key = KeyPair::generate().map_err(rcgen_err("generating the CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name("mesh-agent mesh CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_DAYS);
    let cert = params
        .self_signed(&key)
        .map_err(rcgen_err("signing the CA"))?;
    write(&key_path, &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path))
}

/// Issues `<node_id>.pem` and `<node_id>.key` in `dir`, signed by the CA there.
pub fn issue(dir: &Path, node_id: &str, days: i64) -> Result<(PathBuf, PathBuf), CertError> {
    validate_node_id(node_id).map_err(|message| CertError::NodeId {
        id: node_id.to_owned(),
        message,
    })?;
    let ca_cert = read(&dir.join(CA_CERT))?;
    let ca_key =
        KeyPair::from_pem(&read(&dir.join(CA_KEY))?).map_err(rcgen_err("reading ca.key"))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, ca_key).map_err(rcgen_err("reading ca.pem"))?;

    let key = KeyPair::generate().map_err(rcgen_err("generating the node key"))?;
    let mut params = CertificateParams::new(vec![node_id.to_owned()])
        .map_err(rcgen_err("the node id as a DNS name"))?;
    params.distinguished_name = name(node_id);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Nodes are both servers and clients of each other (mutual TLS).
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    set_validity(&mut params, days);
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(rcgen_err("signing the node certificate"))?;
    let cert_path = dir.join(format!("{node_id}.pem"));
    let key_path = dir.join(format!("{node_id}.key"));
    write(&key_path, &key.serialize_pem(), true)?;
    write(&cert_path, &cert.pem(), false)?;
    Ok((cert_path, key_path))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A day of slack for clocks behind ours.
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(days);
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), CertError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io_err(path))?;
    file.write_all(text.as_bytes()).map_err(io_err(path))
}
