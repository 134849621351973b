//! Loss and delay injected under quinn, for simulations only. This kernel has no `netem`, so
//! `mesh-sim`'s real engine starts each agent with `--sim-net-faults FILE` (a hidden flag; no
//! config key reaches it) and writes `loss=0.1 delay_ms=50` into the file; the socket re-reads it
//! when it changes. What the node sends is dropped or held back; what it receives is untouched,
//! so a fault set on every node acts on every link, both ways.
//!
//! Without the flag none of this exists: the endpoint runs on quinn's own socket.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use rand::RngExt;
use tracing::warn;

/// How often the file is looked at.
const REREAD: Duration = Duration::from_millis(200);
/// Datagrams held back at most at once (past it, one more is lost: a full queue drops).
const MAX_HELD: u64 = 65_536;

/// The faults in force, as the file last said.
#[derive(Debug, Default)]
pub struct NetFaults {
    /// Loss as a fraction, in f64 bits.
    loss: AtomicU64,
    delay_us: AtomicU64,
    held: AtomicU64,
}

impl NetFaults {
    fn loss(&self) -> f64 {
        f64::from_bits(self.loss.load(Ordering::Relaxed))
    }

    fn delay(&self) -> Duration {
        Duration::from_micros(self.delay_us.load(Ordering::Relaxed))
    }

    /// Reads `loss=F delay_ms=N` (either may be left out: 0); a file that does not parse
    /// leaves the faults as they were and says why.
    fn reload(&self, path: &Path) {
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        match parse(&text) {
            Ok((loss, delay)) => {
                self.loss.store(loss.to_bits(), Ordering::Relaxed);
                self.delay_us
                    .store(delay.as_micros() as u64, Ordering::Relaxed);
            }
            Err(problem) => warn!(path = %path.display(), problem, "network faults file ignored"),
        }
    }
}

fn parse(text: &str) -> Result<(f64, Duration), String> {
    let (mut loss, mut delay_ms) = (0.0, 0.0);
    for word in text.split_whitespace() {
        let (key, value) = word
            .split_once('=')
            .ok_or_else(|| format!("`{word}` is not key=value"))?;
        let value: f64 = value
            .parse()
            .map_err(|_| format!("`{word}`: not a number"))?;
        match key {
            "loss" if (0.0..=1.0).contains(&value) => loss = value,
            "delay_ms" if (0.0..=60_000.0).contains(&value) => delay_ms = value,
            "loss" | "delay_ms" => return Err(format!("`{word}`: out of range")),
            _ => return Err(format!("`{key}`: loss or delay_ms")),
        }
    }
    Ok((loss, Duration::from_secs_f64(delay_ms / 1e3)))
}

/// Watches `path` for the life of the runtime; the faults start as it says now.
pub fn watch(path: PathBuf) -> Arc<NetFaults> {
    let faults = Arc::new(NetFaults::default());
    faults.reload(&path);
    let watched = Arc::downgrade(&faults);
    tokio::spawn(async move {
        let mut last = None;
        loop {
            tokio::time::sleep(REREAD).await;
            let Some(faults) = watched.upgrade() else {
                return;
            };
            let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
            if modified != last {
                last = modified;
                faults.reload(&path);
            }
        }
    });
    faults
}

/// The endpoint on `socket`: on quinn's own socket, or with `faults` (simulations only) on a
/// [`FaultySocket`] around it.
pub(crate) fn endpoint(
    socket: std::net::UdpSocket,
    server: quinn::ServerConfig,
    faults: Option<Arc<NetFaults>>,
) -> io::Result<quinn::Endpoint> {
    use quinn::Runtime;
    let runtime = Arc::new(quinn::TokioRuntime);
    let config = quinn::EndpointConfig::default();
    match faults {
        None => quinn::Endpoint::new(config, Some(server), socket, runtime),
        Some(faults) => {
            let inner = runtime.wrap_udp_socket(socket)?;
            let faulty = Arc::new(FaultySocket::new(inner, faults));
            quinn::Endpoint::new_with_abstract_socket(config, Some(server), faulty, runtime)
        }
    }
}

/// quinn's socket, with `faults` applied to what it sends.
pub struct FaultySocket {
    inner: Arc<dyn AsyncUdpSocket>,
    faults: Arc<NetFaults>,
}

impl FaultySocket {
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, faults: Arc<NetFaults>) -> FaultySocket {
        FaultySocket { inner, faults }
    }
}

impl fmt::Debug for FaultySocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultySocket")
            .field("loss", &self.faults.loss())
            .field("delay", &self.faults.delay())
            .finish()
    }
}

impl AsyncUdpSocket for FaultySocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Arc::clone(&self.inner).create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let loss = self.faults.loss();
        if loss > 0.0 && rand::rng().random::<f64>() < loss {
            // Lost on the wire: the sender never knows.
            return Ok(());
        }
        let delay = self.faults.delay();
        if delay.is_zero() {
            return self.inner.try_send(transmit);
        }
        if self.faults.held.fetch_add(1, Ordering::Relaxed) >= MAX_HELD {
            self.faults.held.fetch_sub(1, Ordering::Relaxed);
            return Ok(());
        }
        let inner = Arc::clone(&self.inner);
        let faults = Arc::clone(&self.faults);
        let (destination, ecn, src_ip) = (transmit.destination, transmit.ecn, transmit.src_ip);
        let contents = transmit.contents.to_vec();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // Sent late, or lost if the socket is busy then, as a queue past a slow link drops.
            let _ = inner.try_send(&Transmit {
                destination,
                ecn,
                contents: &contents,
                segment_size: None,
                src_ip,
            });
            faults.held.fetch_sub(1, Ordering::Relaxed);
        });
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    /// One datagram per send, so that loss takes datagrams, not batches of them.
    fn max_transmit_segments(&self) -> usize {
        1
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn the_file_says_loss_and_delay() {
        assert_eq!(parse("").unwrap().0, 0.0);
        let (loss, delay) = parse("loss=0.1 delay_ms=50\n").unwrap();
        assert_eq!(loss, 0.1);
        assert_eq!(delay.as_millis(), 50);
        assert!(parse("loss=2").unwrap_err().contains("out of range"));
        assert!(parse("jitter=1").unwrap_err().contains("loss or delay_ms"));
        assert!(parse("loss").unwrap_err().contains("key=value"));
    }
}
