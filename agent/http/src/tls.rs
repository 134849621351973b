//! HTTPS for the API: a certificate chain and key from PEM files (`[http] tls_cert_file`,
//! `tls_key_file`), served with rustls. [`Tls::reload`] reads the files again (on SIGHUP), so a
//! renewed certificate is served to the next connection without a restart; connections already
//! open keep the one they began with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The certificate files of the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Certificate files that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("http.tls_cert_file: cannot read a PEM certificate chain from {path}: {message}")]
    Cert { path: String, message: String },
    #[error("http.tls_key_file: cannot read a PEM private key from {path}: {message}")]
    Key { path: String, message: String },
    #[error("http.tls_key_file: {key} does not go with the certificate in {cert}: {message}")]
    Mismatch {
        cert: String,
        key: String,
        message: String,
    },
}

fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let shown = |path: &Path| path.display().to_string();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|err| TlsError::Cert {
            path: shown(&files.cert),
            message: err.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Cert {
            path: shown(&files.cert),
            message: "no CERTIFICATE block".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|err| TlsError::Key {
        path: shown(&files.key),
        message: err.to_string(),
    })?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|err| TlsError::Cert {
                path: shown(&files.cert),
                message: err.to_string(),
            })?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|err| TlsError::Mismatch {
                cert: shown(&files.cert),
                key: shown(&files.key),
                message: err.to_string(),
            })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server's TLS settings, swapped whole by [`Tls::reload`].
pub struct Tls {
    config: ArcSwap<ServerConfig>,
}

impl Tls {
    pub fn new(files: &TlsFiles) -> Result<Arc<Tls>, TlsError> {
        Ok(Arc::new(Tls {
            config: ArcSwap::new(load(files)?),
        }))
    }

    /// Reads `files` again; on an error the certificate in force stays.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        self.config.store(load(files)?);
        Ok(())
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.load_full())
    }
}
