//! One bundle server: a request with the ETag the mesh holds (`If-None-Match`), `304` meaning
//! the mesh is up to date, a `200` read under `bundle.max_bytes` and written through
//! `RegoService::put_bundle` with its ETag. Every request is noted in the bundle's status.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_NONE_MATCH};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use agent_policy::opa::bundle::SourceConfig;
use agent_policy::opa::{PollNote, PutBundle, RegoService};

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error("bundle {name:?}: {message}")]
    Setup { name: String, message: String },
    #[error("{0}")]
    Request(String),
}

/// Polls one bundle server.
pub struct Fetcher {
    pub source: SourceConfig,
    http: reqwest::Client,
    token: Option<String>,
    max_bytes: u64,
}

impl Fetcher {
    /// The client of `source`: its CA for HTTPS, its bearer token.
    pub fn new(source: SourceConfig, max_bytes: u64) -> Result<Fetcher, PollError> {
        let setup = |message: String| PollError::Setup {
            name: source.name.clone(),
            message,
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60));
        if let Some(ca) = &source.ca_file {
            builder = builder.use_preconfigured_tls(tls(ca).map_err(&setup)?);
        }
        let token = match &source.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|err| {
                        setup(format!("cannot read token_file {}: {err}", path.display()))
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        let http = builder
            .build()
            .map_err(|err| setup(format!("cannot build the HTTP client: {err}")))?;
        Ok(Fetcher {
            source,
            http,
            token,
            max_bytes,
        })
    }

    /// Between `min_delay` and `max_delay`, spread by the clock so pollers do not align.
    pub fn next_delay(&self) -> Duration {
        let min = self.source.min_delay();
        let span = self.source.max_delay().saturating_sub(min).as_millis() as u64;
        if span == 0 {
            return min;
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
        min + Duration::from_millis(nanos % span)
    }

    /// One request. `Some(revision)` when a new bundle was downloaded and activated.
    pub async fn poll(&self, rego: &Arc<RegoService>) -> Result<Option<String>, PollError> {
        let name = self.source.name.clone();
        let note = |ok: bool, http_code: Option<u16>, error: Option<String>| {
            rego.note_poll(PollNote {
                name: &name,
                ok,
                http_code,
                error,
            })
        };
        let etag = {
            let rego = Arc::clone(rego);
            let name = name.clone();
            tokio::task::spawn_blocking(move || rego.stored_bundle(&name))
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
                .map(|stored| stored.etag)
                .filter(|etag| !etag.is_empty())
        };
        let mut request = self.http.get(&self.source.url);
        if let Some(etag) = &etag {
            request = request.header(IF_NONE_MATCH, etag);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let mut response = match request.send().await {
            Ok(response) => response,
            Err(err) => {
                let message = format!("request to {} failed: {err}", self.source.url);
                note(false, None, Some(message.clone()));
                return Err(PollError::Request(message));
            }
        };
        let status = response.status();
        if status == StatusCode::NOT_MODIFIED {
            note(true, Some(304), None);
            return Ok(None);
        }
        if status != StatusCode::OK {
            let message = format!("bundle server {} answered {status}", self.source.url);
            note(false, Some(status.as_u16()), Some(message.clone()));
            return Err(PollError::Request(message));
        }
        let new_etag = response
            .headers()
            .get(ETAG)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let too_large = |got: u64| {
            format!(
                "the bundle from {} is over bundle.max_bytes ({}; {got} bytes or more)",
                self.source.url, self.max_bytes
            )
        };
        if let Some(length) = response.content_length()
            && length > self.max_bytes
        {
            let message = too_large(length);
            note(false, Some(200), Some(message.clone()));
            return Err(PollError::Request(message));
        }
        let mut body: Vec<u8> = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if (body.len() + chunk.len()) as u64 > self.max_bytes {
                        let message = too_large((body.len() + chunk.len()) as u64);
                        note(false, Some(200), Some(message.clone()));
                        return Err(PollError::Request(message));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(err) => {
                    let message = format!("reading the bundle from {}: {err}", self.source.url);
                    note(false, Some(200), Some(message.clone()));
                    return Err(PollError::Request(message));
                }
            }
        }
        let put = {
            let rego = Arc::clone(rego);
            let name = name.clone();
            let url = self.source.url.clone();
            let etag = new_etag.clone();
            tokio::task::spawn_blocking(move || {
                rego.put_bundle(PutBundle {
                    name: &name,
                    archive: &body,
                    source: &url,
                    etag: &etag,
                })
            })
            .await
        };
        match put {
            Ok(Ok((revision, changed))) => {
                note(true, None, None);
                Ok(changed.then_some(revision))
            }
            Ok(Err(err)) => {
                let message = format!("the bundle from {} was refused: {err}", self.source.url);
                note(true, None, Some(message.clone()));
                Err(PollError::Request(message))
            }
            Err(err) => Err(PollError::Request(err.to_string())),
        }
    }
}

fn tls(ca: &Path) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .map_err(|err| format!("cannot read ca_file {}: {err}", ca.display()))?
    {
        let cert = cert.map_err(|err| format!("{}: not a PEM certificate: {err}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|err| format!("{}: not a CA certificate: {err}", ca.display()))?;
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth())
        .map_err(|err| format!("TLS setup: {err}"))
}
