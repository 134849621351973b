//! `mesh-agent status`: the local agent at a glance, for an operator logged into the node: node,
//! version, policy revision, members by state, outbox and breaker, the latest decisions and mesh
//! actions. Read from the agent's own API (`/health`, `/mesh`, `/mesh/members`, `/mesh/incidents`,
//! `/audit`), redrawn in place every `--interval-sec` on a terminal, printed once otherwise.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::Value;

/// Where the agent is and how to reach it.
pub struct Target {
    pub url: String,
    pub token_file: Option<PathBuf>,
    pub cacert: Option<PathBuf>,
}

pub(crate) struct Client {
    http: reqwest::blocking::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(target: &Target) -> anyhow::Result<Client> {
        let mut builder = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5));
        if let Some(ca) = &target.cacert {
            builder = builder.use_preconfigured_tls(tls(ca)?);
        } else if target.url.starts_with("https://") {
            anyhow::bail!(
                "{} is HTTPS: give the CA of its certificate with --cacert",
                target.url
            );
        }
        let token = match &target.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the token file {}", path.display()))?
                    .lines()
                    .map(|line| line.split('#').next().unwrap_or("").trim())
                    .find(|line| !line.is_empty())
                    .with_context(|| format!("{} holds no token", path.display()))?
                    .to_string(),
            ),
            None => None,
        };
        Ok(Client {
            http: builder.build().context("cannot build the HTTP client")?,
            base: target.url.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// `PUT path` with `body` (bytes): the answer's JSON, or the agent's error as the message.
    pub(crate) fn put(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .put(format!("{}{path}", self.base))
            .header("content-type", "application/gzip")
            .timeout(Duration::from_secs(60))
            .body(body);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .with_context(|| format!("cannot reach the agent at {}", self.base))?;
        let status = response.status();
        let body: Value = response
            .json()
            .with_context(|| format!("PUT {path}: {status}, and the answer is not JSON"))?;
        if !status.is_success() {
            let message = body["message"]
                .as_str()
                .or(body["error"]["message"].as_str())
                .unwrap_or("");
            anyhow::bail!("PUT {path}: {status} {message}");
        }
        Ok(body)
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .with_context(|| format!("cannot reach the agent at {}", self.base))?;
        let status = response.status();
        let body: Value = response
            .json()
            .with_context(|| format!("GET {path}: not JSON"))?;
        if !status.is_success() {
            let message = body["error"]["message"].as_str().unwrap_or("");
            anyhow::bail!("GET {path}: {status} {message}");
        }
        Ok(body)
    }
}

fn tls(ca: &Path) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read {}", ca.display()))?
    {
        roots
            .add(cert.with_context(|| format!("{}: not a PEM certificate", ca.display()))?)
            .with_context(|| format!("{}: not a CA certificate", ca.display()))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Shows the agent; with `once` (or when stdout is not a terminal) a single time.
pub fn run(target: &Target, interval: Duration, once: bool) -> anyhow::Result<()> {
    let client = Client::new(target)?;
    let live = !once && std::io::stdout().is_terminal();
    loop {
        let view = render(&client)?;
        let mut out = std::io::stdout().lock();
        if live {
            // Home and clear: the view is redrawn in place.
            write!(out, "\x1b[H\x1b[2J")?;
        }
        out.write_all(view.as_bytes())?;
        out.flush()?;
        if !live {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

/// A value as the view shows it. Strings come from callers and peers (event types, node ids): a
/// control character is written escaped, so none reaches the terminal as a command.
fn text(value: &Value) -> String {
    let shown = match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    if shown.chars().any(char::is_control) {
        shown.chars().flat_map(char::escape_default).collect()
    } else {
        shown
    }
}

fn render(client: &Client) -> anyhow::Result<String> {
    let health = client.get("/health")?;
    let mesh = client.get("/mesh")?;
    let members = client.get("/mesh/members")?;
    let incidents = client.get("/mesh/incidents")?;
    let audit = client.get("/audit?limit=8")?;
    let mut out = String::new();
    let summary = &mesh;
    let _ = writeln!(
        out,
        "mesh-agent {}  node {}  ({})  {}",
        text(&health["version"]),
        text(&health["node_id"]),
        text(&mesh["mode"]),
        text(&health["timestamp"]),
    );
    let revision = &summary["policy_revision"];
    let _ = writeln!(
        out,
        "policies: {} active, revision {} ({})  audit head {}",
        text(&health["active_policies"]),
        text(&health["policy_revision"]),
        text(&revision["digest"]),
        text(&health["audit_head"]),
    );
    let counts = &summary["members"];
    let _ = writeln!(
        out,
        "members: {} alive, {} suspect, {} dead  converged: {}",
        text(&counts["alive"]),
        text(&counts["suspect"]),
        text(&counts["dead"]),
        text(&summary["converged"]),
    );
    if let Some(list) = members["members"].as_array() {
        for member in list.iter().take(16) {
            let _ = writeln!(
                out,
                "  {:<24} {:<8} heartbeat {:>6} ms  revision {}{}",
                text(&member["node_id"]),
                text(&member["state"]),
                text(&member["heartbeat_age_ms"]),
                text(&member["policy_revision"]["head"]),
                if member["is_self"] == true {
                    "  (this node)"
                } else {
                    ""
                },
            );
        }
        if list.len() > 16 {
            let _ = writeln!(out, "  ... {} more", list.len() - 16);
        }
    }
    match health.get("upstream") {
        Some(up) => {
            let _ = writeln!(
                out,
                "upstream: {} {}  breaker {} ({}/{} failures)  outbox {}/{} oldest {} s",
                text(&up["broker"]),
                if up["connected"] == true {
                    "connected"
                } else {
                    "DISCONNECTED"
                },
                text(&up["breaker"]["state"]),
                text(&up["breaker"]["failure_count"]),
                text(&up["breaker"]["failure_threshold"]),
                text(&up["outbox_depth"]),
                text(&up["outbox_capacity"]),
                text(&up["outbox_oldest_age_sec"]),
            );
        }
        None => {
            let _ = writeln!(out, "upstream: none (no mqtt.url)");
        }
    }
    let _ = writeln!(out, "recent decisions:");
    match audit["entries"].as_array() {
        Some(entries) if !entries.is_empty() => {
            for entry in entries {
                let matched: Vec<String> = entry["results"]
                    .as_array()
                    .map(|results| {
                        results
                            .iter()
                            .filter(|r| r["matched"] == true)
                            .map(|r| text(&r["policy_name"]))
                            .collect()
                    })
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  #{:<8} {}  {:<20} matched: {}",
                    text(&entry["seq"]),
                    text(&entry["timestamp"]),
                    text(&entry["input"]["event_type"]),
                    if matched.is_empty() {
                        "-".into()
                    } else {
                        matched.join(", ")
                    },
                );
            }
        }
        _ => {
            let _ = writeln!(out, "  none yet");
        }
    }
    let _ = writeln!(out, "recent mesh actions:");
    match incidents["actions"].as_array() {
        Some(actions) if !actions.is_empty() => {
            for action in actions.iter().take(8) {
                let _ = writeln!(
                    out,
                    "  {}  policy {}  {}  by {}{}",
                    text(&action["action_id"]),
                    text(&action["policy_id"]),
                    text(&action["incident_key"]),
                    text(&action["actor"]),
                    if action["takeover"] == true {
                        " (takeover)"
                    } else {
                        ""
                    },
                );
            }
        }
        _ => {
            let _ = writeln!(out, "  none");
        }
    }
    Ok(out)
}
