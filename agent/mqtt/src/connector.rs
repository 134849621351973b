//! MQTT connections (rumqttc): the broker endpoint from `mqtt.url`, TLS with rustls (ring) for
//! `mqtts://`, credentials, keep-alive, persistent sessions, and the reconnect backoff.
//!
//! Every connection is a fresh `(AsyncClient, EventLoop)` pair from [`Connector::pair`]: after a
//! connection error the caller drops both and makes a new pair. So nothing queued for a dead
//! connection is ever replayed by rumqttc behind the caller's back: the intake's acknowledgements
//! and the publisher's packet ids always belong to the connection they were made on, and the
//! publisher resends from its outbox instead. Sessions are persistent (clean session off), so the
//! broker keeps the intake's subscriptions and queued incidents across reconnects.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, EventLoop, MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::MqttConfig;

/// Why an MQTT setting cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error(
        "`{url}` is not an MQTT url: {reason} (expected mqtt://host:port or mqtts://host:port)"
    )]
    Url { url: String, reason: &'static str },
    #[error("cannot read {what} {path}: {source}")]
    Pem {
        what: &'static str,
        path: String,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("TLS setup: {0}")]
    Tls(#[from] rustls::Error),
    #[error("mqtts:// needs mqtt.ca_file (the CA that signed the broker's certificate)")]
    NoCa,
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Endpoint {
    /// `mqtt://host[:port]` (1883) or `mqtts://host[:port]` (8883); `tcp://` and `ssl://` too.
    pub fn parse(url: &str) -> Result<Endpoint, MqttError> {
        let bad = |reason| MqttError::Url {
            url: url.to_owned(),
            reason,
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            _ => return Err(bad("unknown scheme")),
        };
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        if authority.contains('@') {
            return Err(bad("put credentials in mqtt.username and mqtt.password"));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                (host, port.parse().map_err(|_| bad("bad port"))?)
            }
            _ => (authority, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        Ok(Endpoint {
            host: host.to_owned(),
            port,
            tls,
        })
    }
}

/// Makes connections to one broker with one set of settings.
#[derive(Clone)]
pub struct Connector {
    endpoint: Endpoint,
    client_id: String,
    credentials: Option<(String, String)>,
    keep_alive: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The largest packet this side sends: a payload of `mqtt.max_message_bytes` with any topic.
    max_outgoing: usize,
}

/// A publish packet's bytes besides its payload, at most: fixed header, topic, packet id.
const PUBLISH_OVERHEAD: usize = 5 + 2 + u16::MAX as usize + 2;

impl Connector {
    pub fn from_config(config: &MqttConfig, node_id: &str) -> Result<Connector, MqttError> {
        let url = config.url.as_deref().unwrap_or("mqtt://127.0.0.1:1883");
        let endpoint = Endpoint::parse(url)?;
        let tls = if endpoint.tls {
            Some(Arc::new(tls_config(config)?))
        } else {
            None
        };
        Ok(Connector {
            endpoint,
            client_id: config
                .client_id
                .clone()
                .unwrap_or_else(|| format!("mesh-agent-{node_id}")),
            credentials: config
                .username
                .clone()
                .map(|user| (user, config.password.clone().unwrap_or_default())),
            keep_alive: Duration::from_secs(config.keep_alive_sec),
            tls,
            max_outgoing: config.max_message_bytes + PUBLISH_OVERHEAD,
        })
    }

    /// A plain connector to `url` (the collector's).
    pub fn plain(url: &str, client_id: &str) -> Result<Connector, MqttError> {
        let config = MqttConfig {
            url: Some(url.to_owned()),
            client_id: Some(client_id.to_owned()),
            ..MqttConfig::default()
        };
        Connector::from_config(&config, client_id)
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The client id with `suffix` (`-in`, `-out`).
    pub fn client_id(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.client_id)
    }

    /// A new client and event loop (not connected until polled). `capacity` bounds the requests
    /// queued for the event loop; a packet larger than `max_incoming` ends the connection.
    pub fn pair(
        &self,
        suffix: &str,
        manual_acks: bool,
        inflight: u16,
        capacity: usize,
        max_incoming: usize,
    ) -> (AsyncClient, EventLoop) {
        let mut options = MqttOptions::new(
            self.client_id(suffix),
            self.endpoint.host.clone(),
            self.endpoint.port,
        );
        options
            .set_keep_alive(self.keep_alive)
            .set_clean_session(false)
            .set_manual_acks(manual_acks)
            .set_inflight(inflight.max(1))
            .set_max_packet_size(max_incoming, self.max_outgoing);
        if let Some((user, pass)) = &self.credentials {
            options.set_credentials(user.clone(), pass.clone());
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::clone(tls),
            )));
        }
        let (client, mut eventloop) = AsyncClient::new(options, capacity);
        let mut network = eventloop.network_options();
        network.set_connection_timeout(10);
        eventloop.set_network_options(network);
        (client, eventloop)
    }
}

fn tls_config(config: &MqttConfig) -> Result<rustls::ClientConfig, MqttError> {
    let pem = |what, path: &std::path::Path| {
        let shown = path.display().to_string();
        move |source| MqttError::Pem {
            what,
            path: shown,
            source,
        }
    };
    let ca = config.ca_file.as_deref().ok_or(MqttError::NoCa)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(pem("CA certificate", ca))? {
        roots.add(cert.map_err(pem("CA certificate", ca))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    Ok(
        match (
            config.client_cert_file.as_deref(),
            config.client_key_file.as_deref(),
        ) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .map_err(pem("client certificate", cert))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(pem("client certificate", cert))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(pem("client key", key))?;
                builder.with_client_auth_cert(chain, key)?
            }
            _ => builder.with_no_client_auth(),
        },
    )
}

/// Exponential reconnect backoff: `min`, doubled per failure, at most `max`; reset on success.
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The wait before the next attempt (and doubles the one after).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let e = Endpoint::parse("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("127.0.0.1", 1884, false));
        let e = Endpoint::parse("mqtts://broker.example").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.tls),
            ("broker.example", 8883, true)
        );
        let e = Endpoint::parse("mqtt://[::1]:1885").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 1885));
        assert!(Endpoint::parse("http://x:1").is_err());
        assert!(Endpoint::parse("mqtt://x:notaport").is_err());
        assert!(Endpoint::parse("mqtt://user:pw@x:1").is_err());
        assert!(Endpoint::parse("localhost:1883").is_err());
    }

    #[test]
    fn mqtts_needs_a_ca() {
        let config = MqttConfig {
            url: Some("mqtts://x".into()),
            ..MqttConfig::default()
        };
        assert!(matches!(
            Connector::from_config(&config, "n"),
            Err(MqttError::NoCa)
        ));
    }

    #[test]
    fn backoff_doubles_to_its_maximum() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<_> = (0..4).map(|_| b.next_wait().as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_wait().as_millis(), 100);
    }
}
